"""An operator's search terms file (`classifier.search_terms_file`), read and checked.

Apart from jobpipe.catalogue (which merges it with the shipped terms and writes the lexical terms)
so that `jobpipe config check` can check the file without loading the database driver.
"""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path

from jobpipe.errors import UserError
from jobpipe.text import InputTooLarge, read_capped
from jobpipe.titles import normalise

MAX_TERMS_FILE_BYTES = 16 * 1024 * 1024  # the shipped file is 0.3 MB
MAX_TERM_CHARS = 200  # the longest BERUFENET name of 2015 has 85


def local_search_terms(path: str | Path | None) -> list[tuple[int, str, str]]:
    """(line, term, occupation) of an operator's search terms file, checked line by line.

    One reading of the lines for checking and for use (a line the check accepted is the row that
    is used): a UTF-8 BOM (Excel's "CSV UTF-8") is dropped, CRLF and CR end lines like LF, blank
    lines, `#` comments and a `term,occupation` header are skipped; a field with a control or line
    separator character, or a term that normalises to nothing ("Teilzeit"), is refused."""
    if not path:
        return []
    source = Path(path).expanduser()
    if not source.is_absolute():
        raise UserError(
            f"classifier.search_terms_file: {str(path)!r} is a relative path; give an absolute one "
            "(the classifier's unit starts in /, so a relative path would name another file there)"
        )
    try:
        text = read_capped(source, MAX_TERMS_FILE_BYTES).decode("utf-8-sig")  # /dev/zero is no terms file
    except InputTooLarge:
        megabytes = MAX_TERMS_FILE_BYTES // 2**20
        raise UserError(f"{source}: over {megabytes} MB; is it a search terms file?") from None
    except OSError as exc:
        raise UserError(f"classifier.search_terms_file: cannot read {source}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{source}: not UTF-8 (byte {exc.start}); save it as UTF-8") from exc
    out: list[tuple[int, str, str]] = []
    first = True
    for number, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{source}: line {number}"
        bad = next((c for c in line if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
        if bad is not None:  # a tab, NUL or U+2028 the CSV reader would keep inside a name
            raise UserError(
                f"{where}: a control or line separator character (U+{ord(bad):04X}); "
                "expected `term,occupation` separated by a comma"
            )
        try:
            row = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            raise UserError(f'{where}: {exc} (quote a whole name: "Maler, Lackierer")') from exc
        if len(row) != 2 or not all(0 < len(f.strip()) <= MAX_TERM_CHARS for f in row):
            raise UserError(
                f"{where}: expected `term,occupation`, each 1-{MAX_TERM_CHARS} characters "
                "(quote a name with a comma)"
            )
        term, occupation = (f.strip() for f in row)
        if first and occupation.lower() == "occupation":
            first = False
            continue  # the header
        first = False
        if not normalise(term):
            raise UserError(
                f"{where}: the term {term!r} is nothing a title search keeps (employment type, "
                "seniority and gender markers are dropped)"
            )
        out.append((number, term, occupation))
    return out
