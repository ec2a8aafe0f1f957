"""The example Flask application: a parent's own data, and the school's export of an account."""

from __future__ import annotations

import html
import json
import re

import pytest

pytest.importorskip("flask")

from flask import Flask

from test_flask_app import (
    Browser,
    activate,
    app,
    clean_environment,
    database,
    letters,
    make_app,
)

__all__ = ["app", "clean_environment", "database", "make_app"]  # the example tests' fixtures


def test_a_parent_downloads_their_own_data(app: Flask) -> None:
    first, _ = letters(app)
    parent = Browser(app.test_client())
    parent.get("/compte/mes-donnees", follow=False)
    assert parent.status == 302  # signed in first
    assert "MES DONNÉES" in activate(parent, first)
    response = parent.client.get("/compte/mes-donnees")
    assert response.headers["Content-Disposition"] == 'attachment; filename="mes-donnees.json"'
    data = json.loads(response.get_data(as_text=True))
    assert data["account"]["login"] == first.login
    assert [c["first_name"] for c in data["children"]] == ["Dylan"]


def test_the_school_exports_the_data_of_its_accounts_only(app: Flask) -> None:
    first, _ = letters(app)
    staff = Browser(app.test_client())
    staff.get("/etablissement/donnees", follow=False)
    assert staff.status == 302  # signed in first
    staff.staff_sign_in()
    assert "Exporter les données d'un compte" in staff.get("/etablissement/")
    staff.get("/etablissement/donnees")
    staff.post("/etablissement/donnees", identifiant="personne.inconnue")
    assert staff.status == 400 and "Aucun compte de l'établissement" in staff.text
    found = re.search(r'name="csrf_token" value="([^"]+)"', staff.page)
    assert found is not None
    response = staff.client.post("/etablissement/donnees", data={
        "csrf_token": html.unescape(found.group(1)), "identifiant": first.login})
    assert response.headers["Content-Disposition"] == f'attachment; filename="{first.login}.json"'
    assert json.loads(response.get_data(as_text=True))["account"]["id"] == first.account_id
