"""Secrets kept out of the log.

Whenever smsuper prints its configuration, a command line or an
environment, values that look secret are replaced by MASK: the values of
variables and arguments whose names look secret (AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, --api-token, DB_PASSWORD, ...), AWS access key ids
and passwords in URLs wherever they appear, secret-looking keys inside JSON values
(SM_HPS, SM_TRAINING_ENV carry the hyperparameters), and secret-looking
`name=value` pairs anywhere: an object-valued hyperparameter reaches the
script's argv and SM_USER_ARGS as `login=bob,password=...`, a query string as
`token=...&...`. Better a masked value an operator did not need hidden than a
key in a log that many can read.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Sequence

MASK = "****"
# Words that make a name secret, matched as parts of the name (API_TOKEN, apiToken, db-password);
# "auth" and "key" only as whole parts, so AUTHOR and KEYBOARD_LAYOUT stay visible.
_SECRET_NAME = re.compile(
    r"(secret|token|passw(or)?d|passphrase|credential|private[_-]?key|access[_-]?key|api[_-]?key|"
    r"signature|cookie|session)|(^|[_.-])(auth|key|pwd)($|[_.-])", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")  # https://user:PASSWORD@host (pip index URLs)
_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA|AROA|AIDA|ANPA|AGPA)[A-Z0-9]{16}\b")
# An argv inside JSON (SM_USER_ARGS, SM_TRAINING_ENV's user_args): "--api-token", "VALUE".
_JSON_ARGUMENT = re.compile(r'"(-{1,2}[^"\\=]{1,200})"(\s*,\s*)"(?:[^"\\]|\\.)*"')
_JSON_PAIR = re.compile(r'"([^"\\]{1,200})"(\s*:\s*)("(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*)')
_JSON_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
# One argument (or JSON string) made of name=value pairs joined by commas, as an object-valued
# hyperparameter becomes one (sagemaker/encoding.py): a value runs to the next ",name=".
_ITEM_PAIR = re.compile(r'(^|,)([\w.-]{1,200})=((?:[^,]|,(?![\w.-]{1,200}=))*)')
# name=value in free text (JAVA_OPTS=-Dtrust.password=X, a query string): up to a separator.
_TEXT_PAIR = re.compile(r'(?<![\w.-])([\w.-]{1,200})=([^\s,&;"\\]*)')


def secret_name(name: str) -> bool:
    return _SECRET_NAME.search(name) is not None


def pairs(item: str) -> str:
    """`item` (one argument, or one JSON string) with the values of secret-named `name=value` pairs
    masked: `login=bob,password=X` -> `login=bob,password=****`, even when X holds a space."""
    if "=" not in item:
        return item
    return _ITEM_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}={MASK}" if secret_name(m.group(2)) else m.group(0),
                          item)


def text(value: str) -> str:
    """`value` with AWS key ids, passwords in URLs and the values of secret-named JSON keys and
    `name=value` pairs masked."""
    value = _AWS_KEY_ID.sub(lambda match: match.group(1) + MASK, value)
    if "://" in value:
        value = _URL_PASSWORD.sub(lambda match: match.group(1) + MASK + "@", value)
    if '"' in value:
        value = _JSON_PAIR.sub(lambda m: f'"{m.group(1)}"{m.group(2)}"{MASK}"' if secret_name(m.group(1))
                               else m.group(0), value)
        value = _JSON_ARGUMENT.sub(lambda m: f'"{m.group(1)}"{m.group(2)}"{MASK}"'
                                   if secret_name(m.group(1).lstrip("-")) else m.group(0), value)
        if "=" in value:  # SM_USER_ARGS: ["--db", "login=bob,password=X"]
            value = _JSON_STRING.sub(lambda m: f'"{pairs(m.group(1))}"', value)
    if "=" in value:
        value = _TEXT_PAIR.sub(lambda m: f"{m.group(1)}={MASK}" if secret_name(m.group(1)) and m.group(2)
                               else m.group(0), value)
    return value


def environ(env: Mapping[str, str]) -> Dict[str, str]:
    """A copy of `env` fit to print."""
    return {name: MASK if secret_name(name) and value else text(value) for name, value in env.items()}


def argv(args: Sequence[str]) -> List[str]:
    """A command line fit to print: `--api-token X`, `--api-token=X` and `PASSWORD=X` lose X."""
    shown: List[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            shown.append(MASK)
            hide_next = False
            continue
        if arg.startswith("-") and len(arg) > 1:
            name, equals, _ = arg.lstrip("-").partition("=")
            if secret_name(name):
                if equals:
                    shown.append(arg.split("=", 1)[0] + "=" + MASK)
                else:
                    shown.append(arg)
                    hide_next = True
                continue
        shown.append(text(pairs(arg)))
    return shown
