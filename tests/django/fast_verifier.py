"""The verifier of the Django tests: DjangoPasswordVerifier with argon2's cheapest parameters."""

from __future__ import annotations

import argon2

from account_merge.contrib.django.hashers import DjangoPasswordVerifier


def fast_django_verifier() -> DjangoPasswordVerifier:
    """Real argon2id (and Django hashes), a thousand times faster than the defaults."""
    return DjangoPasswordVerifier(
        argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST), warn_if_weak=False)
