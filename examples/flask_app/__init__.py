"""Scolarité Services: a small Flask application that embeds account_merge.

``flask --app examples.flask_app run`` serves it (see README.md);
:func:`create_app` builds it, and nothing happens at import.
"""

from .app import create_app

__all__ = ["create_app"]
