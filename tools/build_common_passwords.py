"""Write the list of common passwords that the default password policy refuses.

The list is the hand-written seed (``tools/common_passwords_seed.txt``:
French and English passwords, words, names, places, clubs) and generated
patterns: keyboard rows and walks of the AZERTY and QWERTY layouts and of
the numeric keypad, digit runs, years 1900-2039, dates (``01011990``).
Every entry is put in the form the policy compares passwords in
(:func:`account_merge.domain.passwords.list_form`); entries shorter than 4
characters are left out.  Variants the policy works out by itself are not
listed: capitals, accents, full-width letters, leetspeak, digits or
symbols stuck on the ends (``soleil2024``), a word typed several times.

The result goes to ``src/account_merge/domain/common_passwords.txt.gz``,
one entry a line, sorted.  A test checks that the shipped file is exactly
what this script writes: edit the seed or this script, never the file.

Usage::

    python tools/build_common_passwords.py          # write the file
    python tools/build_common_passwords.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import gzip
import sys
from collections.abc import Iterable, Iterator
from datetime import date, timedelta
from itertools import permutations
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "tools" / "common_passwords_seed.txt"
TARGET = ROOT / "src" / "account_merge" / "domain" / "common_passwords.txt.gz"

try:
    from account_merge.domain.passwords import list_form
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(ROOT / "src"))
    from account_merge.domain.passwords import list_form

#: Entries shorter than this are left out (they would refuse too much).
MIN_LENGTH = 4

DIGITS = "1234567890"

#: The rows of letters and digits, top to bottom, of each layout.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "azerty": (DIGITS, "azertyuiop", "qsdfghjklm", "wxcvbn"),
    "qwerty": (DIGITS, "qwertyuiop", "asdfghjkl", "zxcvbnm"),
}

#: The numeric keypad, top row first.
KEYPAD = ("789", "456", "123")

#: Years typed alone, and the years of the dates.
YEARS = range(1900, 2040)
DATE_YEARS = range(1930, 2040)


def seed(path: Path = SEED) -> Iterator[str]:
    """The words of the seed file: one a line, ``#`` starts a comment."""
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            yield text


def runs(text: str, shortest: int = MIN_LENGTH) -> Iterator[str]:
    """Every slice of *text* of *shortest* characters or more, both ways."""
    for start in range(len(text)):
        for end in range(start + shortest, len(text) + 1):
            yield text[start:end]
            yield text[start:end][::-1]


def columns(rows: tuple[str, ...], *, with_digits: bool) -> list[str]:
    """The columns of a layout, top to bottom (``1qaz``, ``2wsx``...)."""
    used = rows if with_digits else rows[1:]
    width = len(used[0])
    return ["".join(row[k] for row in used if k < len(row)) for k in range(width)]


def keyboard_walks() -> Iterator[str]:
    """Rows, columns, zigzags and interleaved rows of both layouts."""
    for rows in LAYOUTS.values():
        for row in rows:
            yield from runs(row)
            for end in range(MIN_LENGTH, len(row) + 1):
                for digits in ("1", "12", "123", "1234", "12345", "123456"):
                    yield row[:end] + digits
        for with_digits in (True, False):
            cols = columns(rows, with_digits=with_digits)
            for start in range(len(cols)):
                for count in range(1, 7):
                    chunk = cols[start:start + count]
                    if len(chunk) < count:
                        break
                    yield "".join(chunk)                       # qazwsx
                    yield "".join(col[::-1] for col in chunk)  # zaqxsw
                    yield "".join(col if k % 2 == 0 else col[::-1]
                                  for k, col in enumerate(chunk))  # 1qazxsw2
                    yield "".join(col[::-1] if k % 2 == 0 else col
                                  for k, col in enumerate(chunk))  # zaq12wsx
        top = rows[1]
        for first, second in ((DIGITS, top), (top, DIGITS), (rows[1], rows[2])):
            woven = "".join(a + b for a, b in zip(first, second, strict=False))
            for end in range(MIN_LENGTH, len(woven) + 1, 2):
                yield woven[:end]                              # 1q2w3e4r
                yield woven[:end][::-1]


def keypad_walks() -> Iterator[str]:
    """Rows, columns and diagonals of the numeric keypad, one after another."""
    rows = list(KEYPAD)
    cols = ["".join(row[k] for row in KEYPAD) for k in range(3)]
    diagonals = ["753", "159"]
    for group in (rows, cols, diagonals):
        pieces = group + [piece[::-1] for piece in group]
        for count in (2, 3):
            for chosen in permutations(pieces, count):
                yield "".join(chosen)
    yield from ("2580", "0852", "8520", "0258", "1470", "3690", "7410", "9630")


def digit_runs() -> Iterator[str]:
    """Runs, repeats and the usual rhythms of digits."""
    for length in range(MIN_LENGTH, 13):
        for start in range(10):
            yield "".join(str((start + k) % 10) for k in range(length))
            yield "".join(str((start - k) % 10) for k in range(length))
            yield str(start) * length
    for a in range(10):
        for b in range(10):
            if a != b:
                for length in (4, 6, 8, 10, 12):
                    yield (f"{a}{b}" * length)[:length]      # 1212, 696969
    for length in (2, 3, 4):
        for count in range(2, 6):
            head = "".join(str(k) for k in range(1, count + 1))
            yield "".join(ch * length for ch in head)           # 112233, 111222333
            yield head * length                                 # 123123, 12341234
            yield head + head[::-1]                             # 123321
            yield "".join(f"{k}0" for k in head)                # 102030
            yield "".join(f"0{k}" for k in head)                # 010203
            yield "".join(f"{k}00" for k in head)               # 100200300


def years() -> Iterator[str]:
    for year in YEARS:
        yield str(year)


def dates() -> Iterator[str]:
    """Every day of :data:`DATE_YEARS`, day first as in France: ``01011990``."""
    day = date(DATE_YEARS.start, 1, 1)
    while day.year < DATE_YEARS.stop:
        yield day.strftime("%d%m%Y")
        day += timedelta(days=1)


def entries(texts: Iterable[str]) -> list[str]:
    """*texts* in list form, long enough, without duplicates, sorted."""
    found = {list_form(text) for text in texts}
    return sorted(entry for entry in found if len(entry) >= MIN_LENGTH)


def build() -> str:
    """The text of the list: one entry a line."""
    texts: list[str] = [*seed(), *keyboard_walks(), *keypad_walks(), *digit_runs(),
                        *years(), *dates()]
    return "".join(f"{entry}\n" for entry in entries(texts))


def compress(text: str) -> bytes:
    """The file's bytes: the same text always gives the same bytes."""
    return gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the shipped file differs from what would be written")
    args = parser.parse_args(argv)
    text = build()
    if args.check:
        current = gzip.decompress(TARGET.read_bytes()).decode("utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run {Path(__file__).name}",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_bytes(compress(text))
    print(f"{TARGET.relative_to(ROOT)}: {text.count(chr(10))} entries")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
