"""The error classes and their stable codes."""

import pytest

from account_merge import exceptions
from account_merge.exceptions import AccountMergeError

CODES = {
    "InvalidCredentials": "invalid_credentials",
    "NotResponsable": "not_responsable",
    "PrincipalNotActive": "principal_not_active",
    "SameAccount": "same_account",
    "NotAuthorized": "not_authorized",
    "IdentityRuleRefused": "not_authorized",
    "NothingToSplit": "nothing_to_split",
    "TooManyAttempts": "too_many_attempts",
    "PasswordPolicyError": "password_policy",
    "AccountNotFound": "account_not_found",
    "ConcurrentUpdate": "concurrent_update",
    "InvalidInput": "invalid_input",
    "InvalidRegister": "invalid_input",
    "StorageError": "storage_error",
    "LoginTaken": "concurrent_update",
    "ExpectationFailed": "concurrent_update",
    "ActivationRequired": "activation_required",
    "AccountMerged": "account_merged",
    "InvalidToken": "invalid_token",
    "NotSupported": "not_supported",
}


def error_classes() -> dict[str, type[AccountMergeError]]:
    return {
        name: getattr(exceptions, name)
        for name in exceptions.__all__
        if name != "AccountMergeError"
    }


def test_the_class_to_code_table_is_pinned() -> None:
    assert {name: cls.code for name, cls in error_classes().items()} == CODES


def test_every_error_derives_from_the_root() -> None:
    assert all(issubclass(cls, AccountMergeError) for cls in error_classes().values())


def test_errors_that_carry_data_expose_it() -> None:
    too_many = exceptions.TooManyAttempts(retry_after=12.2)
    assert too_many.retry_after == 12
    assert exceptions.AccountNotFound("acc1").account_id == "acc1"
    assert exceptions.InvalidInput("login", "bad").field == "login"
    assert exceptions.StorageError("/tmp/x.sqlite3", "corrupt").store == "/tmp/x.sqlite3"
    assert exceptions.ActivationRequired("acc1").account_id == "acc1"
    assert exceptions.AccountMerged("acc2").account_id == "acc2"
    assert exceptions.NotSupported("tokens").tier == "tokens"


@pytest.mark.parametrize("name", sorted(CODES))
def test_str_and_repr_name_the_code(name: str) -> None:
    cls = error_classes()[name]
    error = {
        "TooManyAttempts": lambda: cls(5),  # type: ignore[call-arg]
        "AccountNotFound": lambda: cls("acc1"),  # type: ignore[call-arg]
        "InvalidInput": lambda: cls("field", "message"),  # type: ignore[call-arg]
        "StorageError": lambda: cls("store", "message"),  # type: ignore[call-arg]
        "ActivationRequired": lambda: cls("acc1"),  # type: ignore[call-arg]
        "AccountMerged": lambda: cls("acc1"),  # type: ignore[call-arg]
        "NotSupported": lambda: cls("tokens"),  # type: ignore[call-arg]
        "InvalidRegister": lambda: cls(()),  # type: ignore[call-arg]
    }.get(name, cls)()
    assert cls.code in str(error)
    assert cls.code in repr(error)


def test_leaves_also_subclass_the_matching_builtin() -> None:
    assert issubclass(exceptions.InvalidInput, ValueError)
    assert issubclass(exceptions.AccountNotFound, LookupError)
    assert issubclass(exceptions.NotAuthorized, PermissionError)
