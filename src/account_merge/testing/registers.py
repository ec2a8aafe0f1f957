"""Made-up registers, in the formats schools export, for tests and benchmarks.

Nothing here is real personal data: names and ids are generated.

>>> import tempfile, pathlib
>>> from account_merge.testing.registers import Family, Person, Pupil, write_siecle
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> claire = Person("294435", "ROBERT", "Claire", "claire@example.org")
>>> dylan = Pupil("1001", "ROBERT", "Dylan")
>>> responsables, eleves = write_siecle(folder, "0860001J", [Family(claire, [dylan])])
>>> responsables.name, eleves.name
('ResponsablesAvecAdresses.xml', 'ElevesSansAdresses.xml')
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import attrs

from account_merge.domain.account import (
    Account,
    AccountStatus,
    Credential,
    CredentialKind,
    Role,
)
from account_merge.domain.child import Child, ChildLink
from account_merge.domain.establishment import Establishment
from account_merge.domain.register import RegisterEntry, RegisterRecord
from account_merge.ports.storage import ChangeSet, Fetch, NewAccount, Storage

__all__ = [
    "Family",
    "Person",
    "Pupil",
    "academy",
    "academy_entries",
    "families",
    "load_academy",
    "write_register_csv",
    "write_siecle",
]


@attrs.frozen
class Person:
    """A responsable as SIECLE knows them (``PERSONNE``)."""

    id: str
    last_name: str
    first_name: str
    email: str | None = None


@attrs.frozen
class Pupil:
    """A pupil as SIECLE knows them (``ELEVE``); ``left_on`` is ``DATE_SORTIE`` (dd/mm/yyyy)."""

    id: str
    last_name: str
    first_name: str
    ine: str | None = None
    left_on: str | None = None


@attrs.frozen
class Family:
    """A responsable, their pupils, and how (``RESP_LEGAL``: 1 or 2 legal, 0 other)."""

    person: Person
    pupils: list[Pupil]
    level: int = 1


def families(count: int, *, start: int = 0, children: int = 2) -> Iterator[Family]:
    """*count* made-up families, two legal responsables sharing *children* pupils each.

    Family *i* has responsables ``P{2i}`` and ``P{2i+1}`` and pupils
    ``E{i}-{k}``; the same *i* always gives the same family.
    """
    for i in range(start, start + count):
        pupils = [Pupil(f"E{i}-{k}", f"NOM{i}", f"Enfant{k}", ine=f"{i:09d}{k}K")
                  for k in range(children)]
        yield Family(Person(f"P{2 * i}", f"NOM{i}", f"Mère{i}", f"m{i}@example.org"), pupils, 1)
        yield Family(Person(f"P{2 * i + 1}", f"NOM{i}", f"Père{i}"), pupils, 2)


def _element(tag: str, text: str | None) -> str:
    return f"<{tag}>{escape(text)}</{tag}>" if text else ""


def write_siecle(folder: Path, uai: str, families: Iterable[Family], *,
                 nom_tag: str = "NOM_DE_FAMILLE", encoding: str = "utf-8") -> tuple[Path, Path]:
    """Write ``ResponsablesAvecAdresses.xml`` and ``ElevesSansAdresses.xml`` into *folder*.

    The shape is SIECLE's (``BEE_RESPONSABLES``, ``PERSONNES/PERSONNE``
    with a ``PERSONNE_ID`` attribute, ``RESPONSABLES/RESPONSABLE_ELEVE``;
    ``BEE_ELEVES``, ``ELEVES/ELEVE`` with an ``ELEVE_ID`` attribute), with
    addresses left out.  *nom_tag* is ``NOM_DE_FAMILLE`` (recent exports)
    or ``NOM``.  Written a family at a time: *families* may be long.
    """
    folder.mkdir(parents=True, exist_ok=True)
    responsables = folder / "ResponsablesAvecAdresses.xml"
    eleves = folder / "ElevesSansAdresses.xml"
    head = f'<?xml version="1.0" encoding="{encoding}"?>\n'
    params = (f"<PARAMETRES><UAJ>{uai}</UAJ><ANNEE_SCOLAIRE>2026</ANNEE_SCOLAIRE>"
              "<DATE_EXPORT>01/09/2026</DATE_EXPORT></PARAMETRES>\n")
    links = folder / ".links.part"
    seen_persons: set[str] = set()
    seen_pupils: set[str] = set()
    with responsables.open("w", encoding=encoding) as r, eleves.open("w", encoding=encoding) as e, \
            links.open("w", encoding=encoding) as lk:
        r.write(head + '<BEE_RESPONSABLES VERSION="1.0">\n' + params + "<DONNEES><PERSONNES>\n")
        e.write(head + '<BEE_ELEVES VERSION="1.0">\n' + params + "<DONNEES><ELEVES>\n")
        for family in families:
            p = family.person
            if p.id not in seen_persons:
                seen_persons.add(p.id)
                r.write(f"<PERSONNE PERSONNE_ID={quoteattr(p.id)}>"
                        f"{_element(nom_tag, p.last_name)}{_element('PRENOM', p.first_name)}"
                        f"{_element('MEL', p.email)}<ADRESSE_ID>{p.id}</ADRESSE_ID>"
                        "</PERSONNE>\n")
            for pupil in family.pupils:
                if pupil.id not in seen_pupils:
                    seen_pupils.add(pupil.id)
                    e.write(f"<ELEVE ELEVE_ID={quoteattr(pupil.id)}>"
                            f"{_element('ID_NATIONAL', pupil.ine)}"
                            f"{_element(nom_tag, pupil.last_name)}"
                            f"{_element('PRENOM', pupil.first_name)}"
                            f"{_element('DATE_SORTIE', pupil.left_on)}</ELEVE>\n")
                lk.write(f"<RESPONSABLE_ELEVE><ELEVE_ID>{escape(pupil.id)}</ELEVE_ID>"
                         f"<PERSONNE_ID>{escape(p.id)}</PERSONNE_ID>"
                         f"<RESP_LEGAL>{family.level}</RESP_LEGAL>"
                         f"<CODE_PARENTE>{10 if family.level == 1 else 20}</CODE_PARENTE>"
                         "</RESPONSABLE_ELEVE>\n")
        r.write("</PERSONNES><RESPONSABLES>\n")
    with responsables.open("a", encoding=encoding) as r, links.open(encoding=encoding) as lk:
        for line in lk:
            r.write(line)
        r.write("</RESPONSABLES><ADRESSES></ADRESSES></DONNEES></BEE_RESPONSABLES>\n")
    with eleves.open("a", encoding=encoding) as e:
        e.write("</ELEVES></DONNEES></BEE_ELEVES>\n")
    links.unlink()
    return responsables, eleves


def write_register_csv(path: Path, uai: str | None, families: Iterable[Family], *,
                       delimiter: str = ",", encoding: str = "utf-8",
                       email: bool = True) -> Path:
    """Write *families* as a register CSV (legal responsables only), one row per pupil."""
    columns = ["responsable_id", "responsable_nom", "eleve_id", "eleve_prenom", "eleve_nom"]
    if uai is not None:
        columns.insert(0, "uai")
    if email:
        columns.append("responsable_email")
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(columns)
        for family in families:
            if family.level not in (1, 2):
                continue
            p = family.person
            for pupil in family.pupils:
                row = [p.id, f"{p.first_name} {p.last_name}", pupil.id, pupil.first_name,
                       pupil.last_name]
                if uai is not None:
                    row.insert(0, uai)
                if email:
                    row.append(p.email or "")
                writer.writerow(row)
    return path


# -- a store as a sync left it, loaded fast ----------------------------------------------------


def academy(children: int) -> Iterator[tuple[str, list[tuple[str, str]], list[str]]]:
    """A made-up register of *children* pupils and 1.5 responsables per pupil.

    Yields ``(family key, [(external id, name)...], [child ids])``: half the
    families have two responsables, half one, each with one pupil, so
    that 300,000 pupils have 450,000 responsables, as an académie does.
    """
    for i in range(children):
        parents = [(f"P{i}a", f"Mère{i} NOM{i}")]
        if i % 2 == 0:
            parents.append((f"P{i}b", f"Père{i} NOM{i}"))
        yield f"F{i}", parents, [f"E{i}"]


def academy_entries(uai: str, children: int) -> Iterator[RegisterEntry]:
    """The entries of :func:`academy` (one per responsable and pupil), made as they are read."""
    for i, (_, parents, pupils) in enumerate(academy(children)):
        kids = tuple(Child(c, f"Enfant{i}", f"NOM{i}", uai) for c in pupils)
        for external_id, name in parents:
            yield RegisterEntry(external_id, name, kids)


def load_academy(storage: Storage, establishment: Establishment, children: int, *,
                 password_hash: str, at: datetime | None = None, chunk: int = 10_000,
                 progress: Callable[[int], None] | None = None) -> int:
    """Store what a sync of :func:`academy_entries` leaves, without hashing: return the accounts.

    Every responsable gets a PROVISIONAL account (sharing *password_hash*:
    hash one password once, with the verifier of the run), its child's
    link and its register record, *chunk* pupils per unit of work, through
    the storage ports (core tier and tier ``register``), without events or
    audit records.  Nothing is validated as the service would: for tests
    and benchmarks only.
    """
    from account_merge.ports.register import Register, RegisterChanges  # noqa: PLC0415
    from account_merge.ports.tiers import require_tier  # noqa: PLC0415

    now = at if at is not None else datetime.now(UTC)
    expires = now + timedelta(days=90)
    uai = establishment.uai
    with storage.unit_of_work() as uow:
        if uai not in uow.fetch(Fetch(establishments=(uai,))).establishments:
            uow.apply(ChangeSet(establishments=(establishment,)))
        uow.commit()
    done = 0
    source = iter(enumerate(academy(children)))
    while batch := list(islice(source, chunk)):
        accounts: list[NewAccount] = []
        credentials: list[Credential] = []
        links: list[ChildLink] = []
        records: list[RegisterRecord] = []
        for i, (_, parents, pupils) in batch:
            kids = [Child(c, f"Enfant{i}", f"NOM{i}", uai) for c in pupils]
            for external_id, name in parents:
                account_id = f"acc-{external_id}"
                login = f"r.{external_id.lower()}"
                accounts.append(NewAccount(Account(
                    id=account_id, login=login, role=Role.RESPONSABLE,
                    status=AccountStatus.PROVISIONAL, display_name=name,
                    establishment_uai=uai, created_at=now), login))
                credentials.append(Credential(account_id, password_hash,
                                              CredentialKind.PROVISIONAL, expires))
                links.extend(ChildLink(account_id=account_id, child=kid,
                                       origin_account_id=account_id, origin_establishment_uai=uai,
                                       via_merge=False, linked_at=now) for kid in kids)
                records.append(RegisterRecord(uai, external_id, account_id, name, None,
                                              tuple(kids)))
        with storage.unit_of_work() as uow:
            uow.apply(ChangeSet(new_accounts=accounts, credentials=credentials, link=links))
            tier: Register = require_tier(uow, Register)
            tier.register_apply(RegisterChanges(put=records))
            uow.commit()
        done += len(accounts)
        if progress is not None:
            progress(done)
    return done
