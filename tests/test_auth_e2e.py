"""End to end: a real OIDC provider (npm oidc-provider), a real JupyterHub with CasaOAuthenticator,
and Debian's Chromium driven by Playwright through the provider's own login page.

Screenshots of the login page, the spawn page and the 403 page go to /work/main/artifacts/.
"""

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.auth_servers import CLIENT_SECRET, login_hub_config, oauth_config, oidc_provider
from tests.hub_process import hub_ports, running_hub

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("auth-e2e")
    port, hub_url = hub_ports()
    with oidc_provider(workdir, [f"{hub_url}/hub/oauth_callback"]) as issuer:
        extra = oauth_config(issuer, hub_url) + f"""
c.CasaOAuthenticator.idp = "cms-iam"
c.CasaOAuthenticator.issuer = {issuer!r}
c.CasaOAuthenticator.allowed_groups = {{"/cms"}}
c.CasaOAuthenticator.admin_groups = {{"/cms/admins"}}
c.CasaOAuthenticator.facility_name = "Coffea-Casa Test Facility"
c.CasaOAuthenticator.signup_url = "https://apply.example.org/cms"
c.CasaOAuthenticator.signup_text = "Apply to join CMS"
c.CasaOAuthenticator.announcements = [{{"text": "Maintenance on Friday 9:00-11:00", "date": "2026-11-27"}}]
c.CasaOAuthenticator.links = [{{"text": "Documentation", "url": "https://example.org/docs"}}]
"""
        with running_hub(workdir / "hub", [*login_hub_config("casa"), extra], port=port) as running:
            running.issuer = issuer
            yield running


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def sign_in(page, hub, username, password):
    """From the hub's spawn URL through the provider's login page; returns the callback's HTTP status."""
    statuses = []
    page.on("response", lambda r: statuses.append(r.status) if "/hub/oauth_callback" in r.url else None)
    page.goto(f"{hub.url}/hub/spawn")
    page.get_by_role("button", name="Sign in with CMS IAM").or_(page.get_by_role("link", name="Sign in with CMS IAM")).click()
    page.locator("#idp-title").wait_for()  # the provider's own page, not the hub's
    assert page.url.startswith(f"{hub.issuer}/interaction/")
    page.fill("#idp-username", username)
    page.fill("#idp-password", password)
    page.click("#idp-submit")
    page.wait_for_url(lambda url: "/hub/" in url and "/hub/oauth_login" not in url)
    page.wait_for_load_state()
    return statuses[-1] if statuses else None


def test_login_page_shows_facility_button_announcement_and_links(hub, page):
    page.goto(f"{hub.url}/hub/login")
    assert page.locator("#casa-facility-name").inner_text() == "Coffea-Casa Test Facility"
    button = page.get_by_text("Sign in with CMS IAM")
    assert button.is_visible()
    assert "Maintenance on Friday 9:00-11:00" in page.locator("#casa-announcements").inner_text()
    assert page.locator("#casa-links a").get_attribute("href") == "https://example.org/docs"
    screenshot(page, "login-page.png")


def test_member_logs_in_through_the_provider_and_reaches_the_spawn_page(hub, page):
    status = sign_in(page, hub, "alice", "alice-pw")
    assert status == 302
    assert page.url == f"{hub.url}/hub/spawn"
    assert page.locator("#casa-test-options").is_visible()
    assert page.locator("#login_widget").inner_text().strip().startswith("alice")
    screenshot(page, "spawn-page.png")

    status, alice = hub.api("GET", "/users/alice")
    assert status == 200, alice
    assert alice["admin"] is False
    assert {"cms", "cms/uscms"} <= set(alice["groups"])
    casa = alice["auth_state"]["casa"]
    assert casa["slug"] == "alice" and casa["groups"] == ["cms", "cms/uscms"]
    assert casa["access_token_expires_at"] and alice["auth_state"]["refresh_token"]


def test_non_member_sees_the_403_page_with_the_group_and_the_apply_link(hub, page):
    status = sign_in(page, hub, "bob", "bob-pw")
    assert status == 403
    refused = page.locator("#casa-refused")
    assert "bob" in refused.inner_text()
    assert page.locator(".casa-required-group").all_inner_texts() == ["cms"]
    link = page.locator("#casa-signup")
    assert link.inner_text().strip() == "Apply to join CMS"
    assert link.get_attribute("href") == "https://apply.example.org/cms"
    screenshot(page, "403-page.png")
    assert hub.api("GET", "/users/bob")[0] == 404


def test_admin_group_member_is_admin_in_the_hub_api(hub, page):
    assert sign_in(page, hub, "carol", "carol-pw") == 302
    status, carol = hub.api("GET", "/users/carol")
    assert status == 200, carol
    assert carol["admin"] is True
    assert "cms/admins" in carol["groups"]


def test_malformed_idp_answer_is_a_clear_page_not_a_500(hub, page):
    status = sign_in(page, hub, "mallory", "mallory-pw")
    assert status == 403
    text = page.locator("#casa-problem").inner_text()
    assert text.startswith("Sign-in failed") and "'groups'" in text
    assert "500 GET /hub/oauth_callback" not in hub.log_text()
    assert CLIENT_SECRET not in page.content() and CLIENT_SECRET not in hub.log_text()


@pytest.fixture(scope="module")
def dummy_hub(tmp_path_factory):
    port, _ = hub_ports()
    extra = """
c.CasaDummyAuthenticator.users = {"alice": {"groups": ["/cms"], "admin": True}, "bob": {"groups": ["atlas"]}}
c.CasaDummyAuthenticator.password = "demo"
c.CasaDummyAuthenticator.allowed_groups = {"cms"}
c.CasaDummyAuthenticator.facility_name = "Casa Demo"
c.CasaDummyAuthenticator.announcements = ["This is a demo"]
"""
    with running_hub(tmp_path_factory.mktemp("auth-dummy"), [*login_hub_config("casa-dummy"), extra], port=port) as running:
        yield running


def test_dummy_login_form_admin_and_refusal_in_a_real_hub(dummy_hub, page):
    page.goto(f"{dummy_hub.url}/hub/login")
    assert page.locator("#casa-facility-name").inner_text() == "Casa Demo"
    assert "This is a demo" in page.locator("#casa-announcements").inner_text()

    page.fill("#username_input", "alice")
    page.fill("#password_input", "demo")
    page.click("#login_submit")
    page.wait_for_url(lambda url: "/hub/login" not in url)
    status, alice = dummy_hub.api("GET", "/users/alice")
    assert status == 200, alice
    assert alice["admin"] is True and alice["groups"] == ["cms"]
    assert alice["auth_state"]["casa"]["slug"] == "alice"

    page.context.clear_cookies()
    page.goto(f"{dummy_hub.url}/hub/login")
    page.fill("#username_input", "bob")
    page.fill("#password_input", "demo")
    with page.expect_response(lambda r: r.url.startswith(f"{dummy_hub.url}/hub/login") and r.request.method == "POST") as posted:
        page.click("#login_submit")
    assert posted.value.status == 403
    page.locator(".casa-required-group").first.wait_for()  # the response is in; wait for the page to render it
    assert page.locator(".casa-required-group").all_inner_texts() == ["cms"]
