"""How an exception becomes one line and an exit status (`python -m resnet_lit`).

Exit status: 2 refused input (the project's `BadInput`, or an option jsonargparse or Lightning
refused), 1 training diverged or a file could not be written, 143 stopped by SIGTERM and 130 by
Ctrl-C (after saving last.ckpt). Any other exception is a bug, ours or a library's, and shows its
traceback; RESNET_LIT_DEBUG=1 shows it for a refusal too.
"""

import difflib
import inspect
import itertools
import os
import re
import signal
import sys
from argparse import ArgumentError
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from resnet_lit.errors import BadInput, NonFiniteLossError
from resnet_lit.runs import claims_so_far, discard_claims, release_empty_claims

DEBUG_ENV = "RESNET_LIT_DEBUG"
# jsonargparse's wording from 4.39 to 4.53 (tests/test_refusals.py reads it from the installed one).
# A data module's option is reported under its group: 'Parser key "data": ... Parser key "download": ...'.
_KEY = re.compile(r'Parser key "([^"]+)":')
# "unrecognized arguments: --x" ("Unrecognized" before 4.41); a data module's, "Option 'x' is not
# accepted" ("Key 'x' is not expected" before 4.41).
_UNKNOWN = re.compile(r"nrecognized arguments: (.*)|(?:Option|Key) '([\w.]+)' is not (?:accepted|expected)")
_TYPE = re.compile(r"Expected a <class '(\w+)'>")
_GIVEN = re.compile(r"(?:Got|Given) value: (.*)")


def refusal(err: BaseException, options: Iterable[str] = ()) -> str | None:
    """What `err` says is wrong, in one line; None for a library's ValueError that is not about the input.

    The project's own refusal where one caused `err`, also where jsonargparse reports a class
    that refused its arguments as a value matching none of a Union's types (it lists each
    type's error); an option the parser does not know, with the nearest of `options` ("did you
    mean --model.arch?"); a value of the wrong type, `--model.lr expects float, got 'abc'`;
    Lightning's check of a Trainer setting, named as its option. Else the library's own message.
    """
    own = next((e for e in _causes(err) if isinstance(e, BadInput)), None)
    if own is not None:
        return str(own)
    text = str(err)
    if isinstance(err, ValueError):  # jsonargparse's, instantiating a class; Lightning's, checking the Trainer's
        errors = [line.strip()[2:] for line in text.partition("\nErrors:")[2].splitlines() if line.strip()[:2] == "- "]
        errors = [e for e in errors if not e.startswith("Expected a <class 'NoneType'>")]  # the value is no None
        named = re.match(r"\s*`(\w+)`", text)  # `num_nodes` must be ..., once built or once it has the data
        if named and named.group(1) in inspect.signature(Trainer.__init__).parameters:
            errors.append(f"--trainer.{named.group(1)}: {text.strip().splitlines()[0]}")
        return errors[0] if errors else None  # None: not bad input but a bug, shown with its traceback
    keys = _KEY.findall(text)
    unknown = _UNKNOWN.search(text)
    if unknown:
        listed = unknown.group(1) or "--" + ".".join([*keys[:1], unknown.group(2)])  # a data module's: its group
        close = difflib.get_close_matches(listed.split()[0].split("=")[0], list(options), n=1, cutoff=0.8)
        return f"unrecognized arguments: {listed}" + (f"; did you mean {close[0]}?" if close else "")
    if keys:  # the innermost key's report: its line and the lines indented below it
        start = text.rfind(f'Parser key "{keys[-1]}"')
        indent = start - text.rfind("\n", 0, start) - 1
        first, *below = text[start:].splitlines()
        within = [first, *itertools.takewhile(lambda line: len(line) - len(line.lstrip()) > indent, below)]
        types, given = _TYPE.findall("\n".join(within)), _GIVEN.search("\n".join(within))
        union = [line.strip()[2:] for line in within if line.strip()[:2] == "- "]  # each of a Union's types
        if types and given and all(_TYPE.match(error) for error in union):  # classes only, not a Literal's values
            key = keys[-1] if len(keys) == 1 or keys[-1].startswith(f"{keys[0]}.") else f"{keys[0]}.{keys[-1]}"
            names = sorted(dict.fromkeys("null" if t == "NoneType" else t for t in types), key="null".__eq__)
            return f"--{key} expects {' or '.join(names)}, got {given.group(1).strip()!r}"
    return " ".join(text.split()) or type(err).__name__


def options_of(parsers: Iterable[Any]) -> list[str]:
    """Every option `parsers` take, `--group.name`; a data module's (`data.init_args.batch_size`) also as users
    write it, `--data.batch_size`."""
    options: set[str] = set()
    for parser in parsers:
        try:
            keys = parser.get_defaults().keys()
        except Exception:  # a hint is not worth a second error: the message stands without it
            continue
        for key in keys:
            options |= {f"--{key}", f"--{key.replace('.init_args.', '.')}"}
    return sorted(options)


@contextmanager
def exit_statuses() -> Iterator[None]:
    """Run the body; a refusal ends in one line on stderr and its exit status, a signal's stop in its own.

    A refusal removes the run folder made for it (only this call's); a folder left empty goes too.
    `err.known_options` (set where the parser refused) names the options "did you mean" picks from.
    """
    before = claims_so_far()
    debug = f"set {DEBUG_ENV}=1 for the traceback"
    try:
        try:
            yield
        except Exception as err:  # an error that SaveOnInterrupt put down to a signal is that stop
            if not getattr(err, "signal_name", None):
                raise
            stop = SIGTERMException()
            stop.signal_name = err.signal_name
            raise stop from err
    except SIGTERMException as stop:
        discard_claims(before)  # a run folder without a checkpoint: nothing to continue from
        raise SystemExit(130 if getattr(stop, "signal_name", "") == "Ctrl-C" else 128 + signal.SIGTERM) from None
    except ArgumentError as err:
        _refuse(err, refusal(err, getattr(err, "known_options", ())), "--help lists the options", 2, before)
    except NonFiniteLossError as err:
        _refuse(err, str(err), debug, 1, before)
    except (ValueError, MisconfigurationException) as err:  # ours (BadInput), and Lightning's of its settings
        line = refusal(err)
        if line is None:
            raise
        _refuse(err, line, debug, 2, before)
    except OSError as err:  # the disk is full, a folder read-only: checkpoints are written atomically, so none is lost
        where = f" ({err.filename})" if err.filename else ""
        line = f"could not write{where}: {err.strerror or err}; the files already on disk are intact"
        _refuse(err, line, debug, 1, before)
    finally:
        release_empty_claims()  # a run folder made for a run that was then refused


def _refuse(err: BaseException, message: str, hint: str, status: int, claims_before: int) -> None:
    if status == 2:
        discard_claims(since=claims_before)  # refused input: the run folder made for it goes too
    if os.environ.get(DEBUG_ENV):
        raise err
    print(f"error: {' '.join(message.split())} ({hint})", file=sys.stderr)
    raise SystemExit(status) from None


def _causes(err: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__
