"""Normalising posting titles: the unit of classification is the normalised title, not the posting.

Thousands of postings say "Pflegefachkraft (m/w/d) in Vollzeit - Berlin" in slightly different
ways; they all share one classification. `normalise` strips what does not change the occupation:

- gender markers: "(m/w/d)", "m/w/d", "(w/m/d)", "(m/f/d)", "(gn)", "(all genders)", "/in", "/-in",
  "*in", ":in", "_in", "(in)", Binnen-I ("LehrerIn"), "/r" ("Angestellte/r"), "/e", and pairs of
  gender forms ("Koch/Köchin", "Kaufmann/-frau", "Mitarbeiter/Mitarbeiterin") -> the first form;
- employment type and start: "in Vollzeit", "Teilzeit", "VZ/TZ", "Minijob", "befristet",
  "ab sofort", "zum nächstmöglichen Zeitpunkt", "remote", "Quereinsteiger willkommen"...;
- location noise: a known German city or state after "in", "-", "|", "@", "Raum", "Region",
  "Standort"; postcodes; "bundesweit", "deutschlandweit";
- seniority: "Senior", "Junior", "Sr.", "Jr.", "erfahrene(r)", "Berufseinsteiger" are dropped. BERUFENET
  has no seniority levels, so "Senior Softwareentwickler" and "Softwareentwickler" are one occupation and
  should be one classification. Words that name a different role ("Leiter", "Meister", "Helfer",
  "Fachkraft", "Trainee", "Werkstudent") are kept: they change the occupation or the KldB level;
- apprenticeship wrappers: "Ausbildung zum/zur/als", "Azubi", "Ausbildungsplatz", years ("2026"):
  the apprenticeship is for the occupation itself (the BA maps both to the same hauptberuf);
- case (lower-cased, ß kept), punctuation (brackets, separators, emoji, trailing dots), whitespace,
  NUL bytes and invalid UTF-8 (via jobpipe.text.clean_text).

The result is at most MAX_CHARS characters, never contains NUL, and is "" for a title that is only
noise ("(m/w/d)") or empty. The same function normalises catalogue names (catalogue.py), so a title
equal to an occupation name compares equal after normalisation.
"""

from __future__ import annotations

import re
import unicodedata

from jobpipe.text import clean_text

MAX_CHARS = 200  # normalised titles longer than this are cut at a word boundary
_MAX_RAW = 2000  # raw input beyond this is ignored before any regex runs (bounded work per title)

# --------------------------------------------------------------------------------------- places
# German cities (the ~150 largest and common job-market places) and federal states. A place is only
# removed in a location position ("in X", "- X", "| X", "Raum X", a trailing "X"), never inside a name.
_PLACES = """
berlin hamburg münchen muenchen köln koeln frankfurt stuttgart düsseldorf duesseldorf leipzig dortmund essen
bremen dresden hannover nürnberg nuernberg duisburg bochum wuppertal bielefeld bonn münster muenster
mannheim karlsruhe augsburg wiesbaden mönchengladbach gelsenkirchen aachen braunschweig kiel chemnitz
halle magdeburg freiburg krefeld mainz lübeck luebeck erfurt oberhausen rostock kassel hagen potsdam
saarbrücken saarbruecken hamm ludwigshafen mülheim oldenburg osnabrück osnabrueck leverkusen heidelberg
darmstadt solingen regensburg herne paderborn neuss ingolstadt offenbach fürth fuerth ulm heilbronn
pforzheim würzburg wuerzburg wolfsburg göttingen goettingen bottrop reutlingen erlangen bremerhaven
koblenz bergisch remscheid trier recklinghausen jena moers salzgitter siegen gütersloh guetersloh
hildesheim hanau kaiserslautern cottbus schwerin witten esslingen ludwigsburg gera iserlohn düren dueren
tübingen tuebingen flensburg zwickau gießen giessen ratingen lünen luenen villingen-schwenningen konstanz
marl worms velbert minden dessau neumünster norderstedt delmenhorst wilhelmshaven viersen bamberg
gladbeck dorsten rheine detmold arnsberg lüneburg lueneburg bayreuth celle landshut aschaffenburg
dinslaken brandenburg passau rosenheim kempten fulda plauen neubrandenburg stralsund greifswald
weimar wismar görlitz goerlitz frankfurt/main freising dachau garching eschborn sindelfingen böblingen
boeblingen walldorf gütersloh wetzlar marburg lingen emden cuxhaven stade buxtehude pinneberg elmshorn
bad homburg baden-baden offenburg friedrichshafen ravensburg lörrach loerrach singen aalen schweinfurt
hof coburg ansbach straubing deggendorf memmingen kaufbeuren neu-ulm traunstein
bayern baden-württemberg baden-wuerttemberg hessen niedersachsen nordrhein-westfalen nrw sachsen
sachsen-anhalt thüringen thueringen brandenburg mecklenburg-vorpommern schleswig-holstein rheinland-pfalz
saarland ruhrgebiet rhein-main rhein-neckar allgäu allgaeu bodensee oberbayern niederbayern
deutschland germany
"""
_PLACE_SET = frozenset(_PLACES.split())
# Multi-word places, matched before single words.
_PLACE_PHRASES = (
    "frankfurt am main",
    "frankfurt an der oder",
    "frankfurt (oder)",
    "halle (saale)",
    "halle an der saale",
    "freiburg im breisgau",
    "mülheim an der ruhr",
    "ludwigshafen am rhein",
    "offenbach am main",
    "bergisch gladbach",
    "bad homburg",
    "st. ingbert",
    "neustadt an der weinstraße",
    "landkreis",
)

# --------------------------------------------------------------------------------------- patterns
_GENDER_TOKEN = (
    r"(?:m|w|d|f|x|i|u|a|mw|mwd|wmd|dmw|div|divers|diverse|gn|nb|männlich|weiblich|male|female|inter)"
)
_GENDER_SEP = r"\s*[/|,\-\\.+&]\s*"
# "(m/w/d)", "[w/m/d]", "(m, w, d)", "(gn)", "(all genders)", "(alle geschlechter)", "(d)"...
_GENDER_PAREN = re.compile(
    r"[(\[{]\s*(?:"
    + _GENDER_TOKEN
    + r"(?:"
    + _GENDER_SEP
    + _GENDER_TOKEN
    + r")*\*?"
    + r"|all\s*genders?|alle\s*geschlechter|geschlechtsneutral|genderneutral|any\s*gender|d/f/m|[mwd]\s*w\s*d"
    + r")\s*[)\]}]",
    re.IGNORECASE,
)
# "m/w/d", "w/m/d", "m|w|d", "m/f/d", "m/w/x" without brackets (at least three parts, or "m/w").
_GENDER_BARE = re.compile(
    r"(?<![\w/])(?:[mwdfx](?:\s*[/|\-]\s*(?:[mwdfx]|div|divers)){1,3})(?![\w/])", re.IGNORECASE
)
_GENDER_WORDS = re.compile(r"\b(?:all\s+genders?|alle\s+geschlechter)\b", re.IGNORECASE)
# Binnen-I before lower-casing: "LehrerIn", "MitarbeiterInnen" -> "Lehrer", "Mitarbeiter".
_BINNEN_I = re.compile(r"(?<=[a-zäöüß])I(?:n|nnen)\b")
# Suffix markers after lower-casing: "/in", "/-in", "*in", ":in", "_in", "(in)", "/innen", "/r", "/e", "(r)".
_GENDER_SUFFIX = re.compile(r"(?<=\w)(?:\s?[/*:_]\s?-?\s?(?:innen|in|r|e|n)|\((?:innen|in|r|e|n)\))(?![\w])")
# BERUFENET's compound forms: "Restaurantfach/mann/frau", "Zimmer/er/in", "Biolog/e/in", "Bauzimmer(er/in)".
_MULTI_SLASH = (
    (re.compile(r"(?<=\w)/(?:mann/frau|frau/mann)(?!\w)"), "mann"),
    (re.compile(r"(?<=\w)[/(]er/in\)?(?!\w)"), "er"),
    (re.compile(r"(?<=\w)/e/in(?!\w)"), "e"),
    # Assistenz/arzt/ärztin, Kranken/schwester/pfleger: the first compound
    (re.compile(r"(?<=\w)/([a-zäöüß]{3,})/[a-zäöüß]{2,}(?![\w/])"), r"\1"),
)
# A pair of gender forms, "a/b" or "a / b" or "a/-b": decided in _pair().
_PAIR = re.compile(r"([\wäöüß\-]+)\s*/\s*(-?)([\wäöüß]+)")
_EMPLOYMENT = re.compile(
    r"\b(?:"
    r"(?:in\s+)?(?:voll-?\s*(?:oder|und|/|bzw\.?)\s*teilzeit|teil-?\s*(?:oder|und|/|bzw\.?)\s*vollzeit)"
    r"|(?:in\s+|als\s+)?(?:vollzeit|teilzeit|vollzeitstelle|teilzeitstelle)(?:stelle)?"
    r"|vz\s*/\s*tz|tz\s*/\s*vz|vz|tz"
    r"|(?:auf\s+)?(?:minijob|mini-job)(?:[\s-]?basis)?|(?:auf\s+)?\d{3}\s*(?:€|euro|eur)(?:[\s-]?basis)?"
    r"|geringfügig(?:\s+beschäftigt(?:e|er)?)?|(?:un)?befristet|festanstellung|in\s+festanstellung"
    r"|ab\s+sofort|sofort|zum\s+nächstmöglichen\s+zeitpunkt|nächstmöglich|zum\s+\d{1,2}\.\d{1,2}\.(?:\d{2,4})?"
    r"|(?:100\s*%\s*)?remote|homeoffice|home-office|home\s+office|hybrid|mobiles\s+arbeiten"
    r"|(?:auch\s+)?(?:für\s+)?quereinsteiger(?:innen)?(?:\s+willkommen)?|quereinstieg(?:\s+möglich)?"
    r"|\d{1,2}(?:\s*-\s*\d{1,2})?\s*(?:std\.?|stunden|h)(?:\s*/\s*|\s+pro\s+)?(?:woche|wo\.?)?"
    r"|schichtdienst|im\s+schichtdienst|in\s+wechselschicht|wechselschicht|mit\s+tarifbindung"
    r"|gesucht|wir\s+suchen|neu|top-?job|jobangebot|stellenangebot|dringend"
    r")(?!\w)",
    re.IGNORECASE,
)
_SENIORITY = re.compile(
    r"\b(?:senior|junior|sr\.?|jr\.?|erfahrene[rn]?|berufserfahrene[rn]?|berufseinsteiger(?:in)?"
    r"|young\s+professional|mit\s+berufserfahrung|(?:mit\s+)?erfahrung)(?!\w)",
    re.IGNORECASE,
)
_APPRENTICE = re.compile(
    r"\b(?:(?:ausbildung|ausbildungsplatz|azubi|auszubildende[rn]?|lehrstelle)(?:\s+(?:zum|zur|zu|als|für))?"
    r"|(?:ab\s+|für\s+)?(?:(?:januar|februar|märz|april|mai|juni|juli|august|september|oktober|november"
    r"|dezember)\s+)?20[2-3]\d(?:\s*/\s*(?:20)?[2-3]\d)?)(?!\w)",
    re.IGNORECASE,
)
_POSTCODE = re.compile(r"(?<!\d)(?:d-)?\d{5}(?!\d)")
_LOCATION_WORDS = re.compile(
    r"\b(?:bundesweit|deutschlandweit|überregional|verschiedene\s+standorte|mehrere\s+standorte"
    r"|(?:für\s+)?(?:unseren?|unsere)\s+(?:standort|standorte|filiale|filialen|niederlassung|team|betrieb))\b",
    re.IGNORECASE,
)
_LOCATION_LEAD = (
    r"(?:in|im\s+raum|raum|region|großraum|grossraum|standort|bei|nahe|am\s+standort|@|-|\||–|—|,)"
)
# Words after which a place is a location (and which go with it), and words a place may follow in a list.
_LEADS = frozenset(
    ["in", "im", "raum", "region", "großraum", "grossraum", "standort", "bei", "nahe", "@", "-", "|", "am"]
)
_LIST_WORDS = frozenset({"und", "/", "oder"})
_PUNCT_SPACE = re.compile(r"[()\[\]{}<>\"'`´“”„«»|•·;,!?:=~^]")
_DASH_SEP = re.compile(r"\s[-–—]+\s|\s[-–—]+$|^[-–—]+\s|[–—]")
_KEEP_PUNCT = set("-/&+#.")
_SPACES = re.compile(r"\s+")


def _strip_symbols(text: str) -> str:
    """Drop emoji, control and format characters; keep letters, digits and a few meaningful signs."""
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat[0] in "LN" or ch in _KEEP_PUNCT or ch.isspace():
            out.append(ch)
        elif cat[0] in "PS" or cat == "Zs":
            out.append(" ")
        # C* (control, format, surrogate, unassigned) and M (combining, after NFKC) are dropped
    return "".join(out)


def _fold(word: str) -> str:
    return word.replace("ä", "a").replace("ö", "o").replace("ü", "u")


def _pair(match: re.Match[str]) -> str:
    """Collapse a pair of gender forms to its first form; leave other slashes ("Maler/Lackierer") alone."""
    a, dash, b = match.group(1), match.group(2), match.group(3)
    fa, fb = _fold(a), _fold(b)
    if fb in (fa + "in", fa + "innen") or fa in (fb + "in", fb + "innen"):
        return a if len(a) <= len(b) else b  # Mitarbeiter/Mitarbeiterin, Koch/Köchin (ö folded)
    if fa.endswith("mann") and (fb.endswith("frau") or fb == "frau"):
        return a  # Kaufmann/-frau, Kaufmann/Kauffrau
    if fa.endswith("frau") and (fb.endswith("mann") or fb == "mann"):
        return a[: -len("frau")] + "mann"  # Kauffrau/-mann -> kaufmann (one form for both orders)
    if dash and fb in ("in", "innen", "r", "e", "n"):
        return a
    if dash and fb.endswith("in") and len(fb) > 4 and fa.endswith(fb[:-2]):
        return a  # Rechtsanwalt/-anwältin, Zahnarzt/-ärztin
    return f"{a} / {b}"


def _strip_places(text: str) -> str:
    for phrase in _PLACE_PHRASES:
        if phrase in text:
            pattern = r"(?:^|\s)(?:" + _LOCATION_LEAD + r"\s*)?" + re.escape(phrase) + r"(?=\s|$)"
            text = re.sub(pattern, " ", text)
    words = text.split(" ")
    out: list[str] = []
    for i, word in enumerate(words):
        bare = word.strip(".")
        if bare in _PLACE_SET:
            prev = out[-1] if out else ""
            # remove a place after a location lead word, or at the very end after a separator
            if prev in _LEADS or prev in _LIST_WORDS:
                if prev in _LEADS:
                    out.pop()
                continue
            if i == len(words) - 1 and i > 0 and prev not in ("der", "die", "das", "für"):
                continue
            if i == 0 and len(words) > 1:
                continue  # "Berlin: Koch" / "München - Elektriker"
        out.append(word)
    # "in" / "im raum" left dangling at the end after removals
    while out and (out[-1] in _LEADS or out[-1] == "und"):
        out.pop()
    return " ".join(out)


def normalise(title: str) -> str:
    """Normalise a posting title (or an occupation name) for deduplication and exact matching.

    Total function: any str (or None/bytes, defensively) gives a str of at most MAX_CHARS characters,
    "" when nothing meaningful is left.
    """
    text = clean_text(title, max_chars=_MAX_RAW) or ""
    text = unicodedata.normalize("NFKC", text)
    text = _GENDER_PAREN.sub(" ", text)
    text = _BINNEN_I.sub("", text)
    text = text.lower()
    text = _GENDER_PAREN.sub(" ", text)
    text = _GENDER_WORDS.sub(" ", text)
    text = _GENDER_BARE.sub(" ", text)
    for pattern, repl in _MULTI_SLASH:
        text = pattern.sub(repl, text)
    text = _GENDER_SUFFIX.sub("", text)
    text = _PAIR.sub(_pair, text)
    text = _POSTCODE.sub(" ", text)
    text = _EMPLOYMENT.sub(" ", text)
    text = _SENIORITY.sub(" ", text)
    text = _APPRENTICE.sub(" ", text)
    text = _LOCATION_WORDS.sub(" ", text)
    text = _DASH_SEP.sub(" - ", text)
    text = _PUNCT_SPACE.sub(" ", text)
    text = _strip_symbols(text)
    text = _SPACES.sub(" ", text).strip()
    text = _strip_places(text)
    # separators, dots and slashes left at the ends or doubled after removals
    text = re.sub(r"(?:\s[-/&+]\s?)+(?=\s|$)", " ", text)
    text = _SPACES.sub(" ", text).strip(" -/&+.")
    text = re.sub(r"^(?:als|zum|zur|für|m|w|d)\s+", "", text)
    text = re.sub(r"\s+(?:als|zum|zur|für|in|im|und|oder|m|w|d)$", "", text)
    text = _SPACES.sub(" ", text).strip(" -/&+.")
    if len(text) > MAX_CHARS:
        cut = text[:MAX_CHARS]
        text = cut.rsplit(" ", 1)[0] if " " in cut else cut
    return text


# --------------------------------------------------------------------------------------- gender forms
_SUFFIX_FORMS = {"in": ("", "in"), "-in": ("", "in"), "innen": ("", "innen"), "r": ("r", ""), "e": ("e", ""),
                 "n": ("n", "")}  # fmt: skip


def _token_forms(token: str) -> tuple[str, str]:
    """One word of a BERUFENET name -> (masculine, feminine) form; words without "/" stay as they are."""
    if "/" not in token:
        return token, token
    paren = re.fullmatch(r"(.+)\((er/in|in|r|e)\)", token)  # Bauzimmer(er/in)
    if paren:
        token = paren.group(1) + "/" + paren.group(2)
    parts = token.split("/")
    head, rest = parts[0], parts[1:]
    low = [p.lower() for p in rest]
    if low in (["mann", "frau"], ["frau", "mann"]):  # Restaurantfach/mann/frau
        return head + "mann", head + "frau"
    if low == ["er", "in"]:  # Zimmer/er/in, Beamt/er/in
        return head + "er", head + "in"
    if low == ["e", "in"]:  # Biolog/e/in
        return head + "e", head + "in"
    if len(rest) == 2 and rest[0][:1].islower() and len(rest[0]) > 3:  # Amts/anwalt/anwältin
        return head + rest[0], head + rest[1]
    if len(rest) == 1:
        tail = rest[0]
        if tail.lower() in _SUFFIX_FORMS:  # Verkäufer/in, Angestellte/r
            m, f = _SUFFIX_FORMS[tail.lower()]
            return head + m, head + f
        if tail.lower() in ("-frau", "frau") and head.lower().endswith("mann"):  # Kaufmann/-frau
            return head, head[: -len("mann")] + "frau"
        if tail.startswith("-") and len(tail) > 3:  # Rechtsanwalt/-anwältin, Zahnarzt/-ärztin
            stem = _fold(tail[1:].lower()).removesuffix("in")
            at = _fold(head.lower()).rfind(stem) if stem else -1
            if at > 0:
                return head, head[:at] + tail[1:]
            return head, tail[1:]
        if _fold(tail.lower()).startswith(_fold(head.lower())[:3]) or tail[:1].isupper():  # Koch/Köchin
            return head, tail
    return head, head + "/" + "/".join(rest)


def gender_forms(name: str) -> tuple[str, str]:
    """A BERUFENET name's (masculine, feminine) reading: "Koch/Köchin" -> ("Koch", "Köchin"),
    "Medizinische/r Fachangestellte/r" -> ("Medizinischer Fachangestellter", "Medizinische Fachangestellte").

    Job titles use one of the two forms; the catalogue keeps both (normalised) as aliases.
    """
    words = (clean_text(name) or "").split()
    forms = [_token_forms(w) for w in words]
    return " ".join(m for m, _ in forms), " ".join(f for _, f in forms)
