"""Fast hashing for the Django tests: the verifier, and Django hashers with tiny costs."""

from __future__ import annotations

import argon2
from django.contrib.auth.hashers import Argon2PasswordHasher, PBKDF2PasswordHasher

from account_merge.contrib.django.hashers import DjangoPasswordVerifier


def fast_django_verifier() -> DjangoPasswordVerifier:
    """Real argon2id (and Django hashes), a thousand times faster than the defaults."""
    return DjangoPasswordVerifier(
        argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST), warn_if_weak=False)


class FastPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """Django's PBKDF2 format with few iterations: a stored ENT password, made quickly."""

    iterations = 1000


class FastArgon2PasswordHasher(Argon2PasswordHasher):
    """Django's ``argon2$`` format with argon2's cheapest parameters."""

    time_cost = 1
    memory_cost = 8
    parallelism = 1
