// A real OpenID Connect provider for jupyterhub-casa's login tests and benchmark.
//
// npm's certified `oidc-provider` does the protocol (authorization code + PKCE, refresh
// tokens, userinfo, discovery); this script adds test accounts, an auto-approving consent
// step (a first-party client) and its own login page.  Routes mimic INDIGO IAM
// (/authorize, /token, /userinfo), so the `cms-iam` preset works against it unchanged.
//
//   node server.mjs <config.json>
//
// config.json: {"issuer": "http://127.0.0.1:PORT", "port": PORT,
//               "clients": [{"client_id", "client_secret", "redirect_uris": [...]}],
//               "accounts": {"alice": {"password": "...", "claims": {...}}},
//               "access_token_ttl": 3600}
// Accounts are read from config.json on every use: rewrite the file to change one.
// Prints "READY <issuer>" once it listens on 127.0.0.1.

import fs from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
// read on every use, so a test can change an account (e.g. take a group away) while the provider runs
function accounts() {
  return JSON.parse(fs.readFileSync(process.argv[2], 'utf8')).accounts || {};
}

function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

function loginPage(uid, clientId, error) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Test IdP - sign in</title></head>
<body>
  <h1 id="idp-title">Test Identity Provider</h1>
  <p>Signing in to <b>${escapeHtml(clientId)}</b></p>
  ${error ? `<p id="idp-error" style="color:#b00">${escapeHtml(error)}</p>` : ''}
  <form method="post" action="/interaction/${escapeHtml(uid)}/login">
    <label>Username <input id="idp-username" name="username" autocomplete="username" autofocus></label>
    <label>Password <input id="idp-password" name="password" type="password" autocomplete="current-password"></label>
    <button id="idp-submit" type="submit">Sign in</button>
  </form>
</body></html>`;
}

const provider = new Provider(config.issuer, {
  clients: config.clients.map((c) => ({
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
    ...c,
  })),
  async findAccount(ctx, sub) {
    const account = accounts()[sub];
    if (!account) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { sub, ...account.claims };
      },
    };
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    // INDIGO IAM releases `groups` with the profile scope
    profile: ['name', 'preferred_username', 'groups'],
    'wlcg.groups': ['wlcg.groups'],
    'org.cilogon.userinfo': ['isMemberOf'],
  },
  scopes: ['openid', 'offline_access', 'storage.read:/'],
  routes: { authorization: '/authorize', userinfo: '/userinfo' },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  pkce: { required: () => false },
  // every client here may refresh, with or without offline_access
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: {
    AccessToken: config.access_token_ttl || 3600,
    RefreshToken: 86400,
    Session: 3600,
    Interaction: 600,
    Grant: 3600,
  },
  cookies: { keys: ['casa-test-only-cookie-key'] },
});
provider.proxy = false;

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.end(body);
}

// First-party client: consent is granted for whatever was asked.
async function grantConsent(details) {
  const { prompt, params, session, grantId } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const missing = prompt.details || {};
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  return grant.save();
}

async function interaction(req, res) {
  const url = new URL(req.url, config.issuer);
  const match = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!match) return send(res, 404, 'not found');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== match[1]) return send(res, 400, 'interaction mismatch');

  if (details.prompt.name === 'consent') {
    const grantId = await grantConsent(details);
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  if (req.method === 'GET') return send(res, 200, loginPage(details.uid, details.params.client_id));
  if (req.method !== 'POST' || !match[2]) return send(res, 405, 'method not allowed');

  const form = await readForm(req);
  const username = form.get('username') || '';
  const account = accounts()[username];
  if (!account || account.password !== form.get('password')) {
    return send(res, 200, loginPage(details.uid, details.params.client_id, 'Invalid username or password.'));
  }
  return provider.interactionFinished(req, res, { login: { accountId: username } }, { mergeWithLastSubmission: false });
}

const oidc = provider.callback();
const server = http.createServer((req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((err) => {
      console.error(err);
      if (!res.headersSent) send(res, 500, escapeHtml(err.message));
    });
  } else {
    oidc(req, res);
  }
});

server.listen(config.port, '127.0.0.1', () => {
  console.log(`READY ${config.issuer}`);
});

function stop() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
