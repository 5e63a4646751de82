// Test helper: asks the real HTCondor library (libcondor_utils from the `htcondor`
// wheel) for IDTOKENs, so tests/test_condor_token_real.py can compare them byte
// for byte with casa_hub.condor_token.make_idtoken.
//
// Built at test time by the pytest fixture (never committed as a binary):
//   g++ -std=c++17 token_shim.cpp <libcondor_utils.so> -Wl,-rpath,<htcondor.libs>
//
// The HTCondor headers are not available, so the few symbols used are declared
// here by hand; their signatures must match the mangled names exported by the
// library (HTCondor 25.x):
//   Condor_Auth_Passwd::generate_token(std::string const&, std::string const&,
//       std::vector<std::string> const&, long, bool, std::string&, int,
//       CondorError*, classad::ClassAd const*)          -- a static member
//   getTokenSigningKey(std::string const&, std::string&, CondorError*)
//   config()
//
// Configuration comes from the environment (CONDOR_CONFIG=ONLY_ENV plus
// _CONDOR_TRUST_DOMAIN, _CONDOR_SEC_TOKEN_POOL_SIGNING_KEY_FILE,
// _CONDOR_SEC_PASSWORD_DIRECTORY, ...), set by the test.
//
// Protocol: one request per line on stdin,
//     <identity> TAB <key id> TAB <lifetime seconds> TAB <authz> [SPACE <authz>...]
// and one answer per line on stdout: "TOKEN <jwt>" or "ERROR <reason>".
// With the single argument "--signing-key <kid>" it instead prints, as hex, the
// signing secret HTCondor derives from the key file (after unscrambling and, for
// POOL, doubling) -- the input of the HKDF step.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

class CondorError;
namespace classad { class ClassAd; }

class Condor_Auth_Passwd {
public:
    static bool generate_token(const std::string &id,
                               const std::string &key_id,
                               const std::vector<std::string> &authz_list,
                               long lifetime,
                               bool capability,
                               std::string &token,
                               int ident,
                               CondorError *err,
                               const classad::ClassAd *extra);
};

bool getTokenSigningKey(const std::string &key_id, std::string &contents, CondorError *err);
void config();
int dprintf_config_tool(const char *subsys, const char *flags, const char *logfile);

static std::vector<std::string> split(const std::string &s, char sep) {
    std::vector<std::string> out;
    std::string cur;
    std::istringstream in(s);
    while (std::getline(in, cur, sep)) out.push_back(cur);
    return out;
}

static std::string hex(const std::string &bytes) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    for (unsigned char c : bytes) {
        out.push_back(digits[c >> 4]);
        out.push_back(digits[c & 0xf]);
    }
    return out;
}

int main(int argc, char **argv) {
    config();
    if (const char *flags = std::getenv("TOKEN_SHIM_DEBUG")) {
        dprintf_config_tool("TOOL", flags, nullptr);
    }

    if (argc == 3 && std::strcmp(argv[1], "--signing-key") == 0) {
        std::string secret;
        if (!getTokenSigningKey(argv[2], secret, nullptr)) {
            std::printf("ERROR cannot read signing key %s\n", argv[2]);
            return 1;
        }
        std::printf("KEY %s\n", hex(secret).c_str());
        return 0;
    }
    if (argc != 1) {
        std::fprintf(stderr, "usage: %s [--signing-key KID] < requests\n", argv[0]);
        return 2;
    }

    std::string line;
    while (std::getline(std::cin, line)) {
        if (line.empty()) continue;
        std::vector<std::string> fields = split(line, '\t');
        if (fields.size() != 4) {
            std::printf("ERROR malformed request\n");
            std::fflush(stdout);
            continue;
        }
        std::vector<std::string> authz;
        for (const std::string &a : split(fields[3], ' ')) {
            if (!a.empty()) authz.push_back(a);
        }
        long lifetime = std::strtol(fields[2].c_str(), nullptr, 10);
        std::string token;
        bool ok = Condor_Auth_Passwd::generate_token(fields[0], fields[1], authz, lifetime,
                                                     false, token, 0, nullptr, nullptr);
        if (!ok) {
            std::string secret;
            bool have_key = getTokenSigningKey(fields[1], secret, nullptr);
            std::printf("ERROR generate_token failed (signing key %s %s)\n", fields[1].c_str(),
                        have_key ? "readable" : "NOT readable");
        } else {
            std::printf("TOKEN %s\n", token.c_str());
        }
        std::fflush(stdout);
    }
    return 0;
}
