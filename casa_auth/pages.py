"""What a person sees at the door: the login page's content and the pages for a refused login.

The refusals are ``tornado.web.HTTPError`` subclasses, raised from ``check_allowed`` or
``authenticate`` as JupyterHub documents.  They carry a plain and an HTML message, so even
the stock ``error.html`` names the group and the apply link; the packaged ``403.html``
(``casa_auth.TEMPLATE_DIR``) lays them out.
"""

from __future__ import annotations

import os
from html import escape
from typing import Iterable

from tornado import web
from traitlets import Dict, List, Unicode, Union, validate
from traitlets.config import LoggingConfigurable

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


class LoginRefused(web.HTTPError):
    """403 for a user who signed in fine but is not in any group that lets them in."""

    def __init__(self, username: str, groups: Iterable[str], required: Iterable[str], signup_url: str, signup_text: str):
        self.casa_refusal = {
            "username": username,
            "groups": sorted(groups),
            "required": sorted(required),
            "signup_url": signup_url,
            "signup_text": signup_text,
        }
        required = self.casa_refusal["required"]
        if required:
            need = " or ".join(required)
            text = f"You signed in as {username}, but this facility is open only to members of {need}."
            html = (
                f"You signed in as <b>{escape(username)}</b>, but this facility is open only to members of "
                + " or ".join(f"<code>{escape(g)}</code>" for g in required)
                + "."
            )
        else:
            text = f"You signed in as {username}, but this facility does not admit anyone by group membership."
            html = escape(text)
        if signup_url:
            text += f" {signup_text}: {signup_url}"
            html += f' <a href="{escape(signup_url, quote=True)}">{escape(signup_text)}</a>'
        super().__init__(403, "%s", text)
        self.jupyterhub_message = text
        self.jupyterhub_html_message = html


class LoginProblem(web.HTTPError):
    """A login that cannot complete for a reason the user should read (never a bare 500).

    403: the IdP's answer about the user is malformed (missing or mistyped claims);
    502: the IdP itself failed (unreachable, error status, unreadable answer).
    """

    def __init__(self, status_code: int, message: str):
        super().__init__(status_code, "%s", message)
        self.casa_problem = message
        self.jupyterhub_message = message


def _announcement(item) -> dict:
    if isinstance(item, str):
        item = {"text": item}
    if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
        raise ValueError(f"an announcement must be a string or a dict with a 'text' string, not {item!r}")
    extra = set(item) - {"text", "url", "date"}
    if extra:
        raise ValueError(f"announcement {item['text']!r}: unknown keys {sorted(extra)} (use text, url, date)")
    return {"text": item["text"], "url": item.get("url", ""), "date": item.get("date", "")}


class CasaLoginPage(LoggingConfigurable):
    """Traits of the facility's login and refusal pages, shared by the casa authenticators."""

    facility_name = Unicode(
        "Analysis Facility",
        config=True,
        help="""Name shown as the login page's heading, e.g. ``"Coffea-Casa at UNL"``.""",
    )
    signup_url = Unicode(
        "",
        config=True,
        help="""Where a refused user applies for membership; linked from the 403 page.

        Example: ``c.CasaOAuthenticator.signup_url = "https://cms-auth.cern.ch/register"``.
        """,
    )
    signup_text = Unicode(
        "Apply for membership",
        config=True,
        help="""Text of the 403 page's link to ``signup_url``.""",
    )
    announcements = List(
        Union([Unicode(), Dict()]),
        config=True,
        help="""News items on the login page: strings or ``{"text", "url", "date"}`` dicts.

        Example::

            c.CasaOAuthenticator.announcements = [
                "Maintenance on Friday 9:00-11:00 CET",
                {"text": "New: XCache at T2_US_Nebraska", "url": "https://example.org/news/1", "date": "2026-11-20"},
            ]
        """,
    )
    links = List(
        Dict(),
        config=True,
        help="""Useful links under the login button: ``{"text", "url"}`` dicts.

        Example: ``[{"text": "Documentation", "url": "https://coffea-casa.readthedocs.io"}]``.
        """,
    )

    @validate("announcements")
    def _validate_announcements(self, proposal):
        return [_announcement(item) for item in proposal["value"]]

    @validate("links")
    def _validate_links(self, proposal):
        links = []
        for link in proposal["value"]:
            if not (isinstance(link.get("text"), str) and isinstance(link.get("url"), str) and link["text"] and link["url"]):
                raise ValueError(f"a login-page link needs non-empty 'text' and 'url' strings, not {link!r}")
            links.append({"text": link["text"], "url": link["url"]})
        return links

    def refusal(self, username: str, groups: Iterable[str], required: Iterable[str]) -> LoginRefused:
        return LoginRefused(username, groups, required, self.signup_url, self.signup_text)
