"""``mailcanary generate rules|slo|dashboards --selector 'job="…"'``: the shipped rules and dashboards for
a scrape job that is not called ``mailcanary`` (a Prometheus Operator PodMonitor's ``<namespace>/<name>``,
a shop's own job naming).

The shipped files stay the only source: ``deploy/prometheus/*.yml`` and ``dashboards/*.json``, read from a
source checkout, or from ``exporter/shipped/`` where setup.py's build step copies them into the wheel.
Nothing is kept as a second hand-written copy, so alerts added to the shipped files are generated too.

Rules: every PromQL label-matcher list (``{…}``) of every rule expression is tokenized (strings and
comments skipped) and each ``job="mailcanary"`` matcher in it is replaced by the selector's matchers, at
its position in the file text, so comments and layout stay as they are; the result is parsed again and
checked to hold exactly the expressions the same rewrite makes of the parsed original. The default
selector therefore yields the shipped file byte for byte. Dashboards: the ``job`` variable's query is
narrowed to the selector and its All value to the same jobs (without ``--selector`` the shipped files,
which list every job that exports ``mailcanary_build_info``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from exporter import __version__

DEFAULT_SELECTOR = 'job="mailcanary"'
RULE_FILES = {"rules": "mailcanary-rules.yml", "slo": "mailcanary-slo.yml"}
PROBE_DASHBOARD = "mailcanary-probe.json"  # scraped as the /probe job, see --probe-selector
_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent
EXIT_OK, EXIT_ERROR = 0, 3


class GenerateError(Exception):
    """A one-line problem: a bad selector, a missing shipped file, a rule the rewrite cannot place."""


# ---- where the shipped files are -------------------------------------------------------------------


def shipped_dir(kind: str) -> Path:
    """``prometheus`` or ``dashboards``: the wheel's copy (exporter/shipped/), else the source checkout's."""
    packaged = _PACKAGE / "shipped" / kind
    if packaged.is_dir():
        return packaged
    source = _CHECKOUT / ("deploy/prometheus" if kind == "prometheus" else "dashboards")
    if source.is_dir():
        return source
    raise GenerateError(
        f"the shipped {kind} files are not installed with this mailcanary ({packaged} is missing): "
        "reinstall from the wheel or run from a source checkout"
    )


# ---- PromQL matcher lists --------------------------------------------------------------------------


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # =, !=, =~, !~
    raw: str  # the string literal as written, quotes included
    value: str  # the string's value
    start: int
    end: int

    @property
    def text(self) -> str:
        return f"{self.label}{self.op}{self.raw}"


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OP = re.compile(r"=~|!~|!=|=")
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _string_end(text: str, i: int) -> int:
    """The index after the PromQL string literal that starts at ``text[i]`` ("…", '…' or `…`)."""
    quote = text[i]
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == "\\" and quote != "`":
            j += 2
            continue
        if c == quote:
            return j + 1
        if c == "\n" and quote != "`":
            break
        j += 1
    raise GenerateError(f"unterminated string at offset {i}: {text[i : i + 40]!r}")


def _string_value(raw: str) -> str:
    if raw[0] == "`":
        return raw[1:-1]
    out, i, body = [], 0, raw[1:-1]
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _matcher_list(text: str, i: int) -> tuple[list[Matcher], int]:
    """The matchers of the list whose ``{`` is at ``text[i]``, and the index after its ``}``."""
    out: list[Matcher] = []
    i = _skip_space(text, i + 1)
    while i < len(text) and text[i] != "}":
        ident = _IDENT.match(text, i)
        if ident is None:  # a quoted label or metric name (Prometheus 3 UTF-8 names)
            if text[i] not in "\"'`":
                raise GenerateError(f"unexpected {text[i]!r} in a label-matcher list at offset {i}")
            end = _string_end(text, i)
            label, start, i = _string_value(text[i:end]), i, end
            i = _skip_space(text, i)
            if i < len(text) and text[i] in ",}":  # a bare quoted metric name, not a matcher
                i = i + 1 if text[i] == "," else i
                i = _skip_space(text, i)
                continue
        else:
            label, start, i = ident.group(), i, ident.end()
        i = _skip_space(text, i)
        op = _OP.match(text, i)
        if op is None:
            raise GenerateError(f"expected a matcher operator after {label!r} at offset {i}")
        i = _skip_space(text, op.end())
        if i >= len(text) or text[i] not in "\"'`":
            raise GenerateError(f"expected a string after {label}{op.group()} at offset {i}")
        end = _string_end(text, i)
        raw = text[i:end]
        out.append(Matcher(label, op.group(), raw, _string_value(raw), start, end))
        i = _skip_space(text, end)
        if i < len(text) and text[i] == ",":
            i = _skip_space(text, i + 1)
    if i >= len(text):
        raise GenerateError("unterminated label-matcher list")
    return out, i + 1


def matchers(expr: str) -> Iterator[Matcher]:
    """Every label matcher of every selector in a PromQL expression (strings and comments skipped)."""
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            i = _string_end(expr, i)
        elif c == "#":
            nl = expr.find("\n", i)
            i = len(expr) if nl < 0 else nl + 1
        elif c == "{":
            found, i = _matcher_list(expr, i)
            yield from found
        else:
            i += 1


# ---- the selector ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    text: str  # normalised: matchers joined by "," as written
    matchers: tuple[Matcher, ...]

    @property
    def is_default(self) -> bool:
        return self.text == DEFAULT_SELECTOR

    def job_regex(self) -> str:
        """The jobs this selector matches as an RE2 regex, written as the inside of a PromQL "…" string
        (Grafana pastes a variable's All value into ``job=~"$job"``)."""
        jobs = [m for m in self.matchers if m.label == "job"]
        if len(jobs) != 1 or len(self.matchers) != 1 or jobs[0].op not in ("=", "=~"):
            raise GenerateError(
                f'selector {{{self.text}}}: the dashboards\' Job variable takes one job="…" or '
                'job=~"…" matcher'
            )
        (m,) = jobs
        regex = m.value if m.op == "=~" else re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", m.value)
        return regex.replace("\\", "\\\\").replace('"', '\\"')

    def prose(self) -> str:
        """How the annotations name the job: ``job "x"``, or the selector."""
        (first, *rest) = self.matchers
        if not rest and first.label == "job" and first.op == "=":
            return f"job {json.dumps(first.value)}"
        return f"selector {{{self.text}}}"


def parse_selector(text: str) -> Selector:
    """``job="x"``, ``{job="x"}``, ``job=~"a|b",cluster="eu"``: one or more PromQL label matchers."""
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1].strip()
    if not body:
        raise GenerateError("--selector is empty: give label matchers, e.g. 'job=\"mailcanary\"'")
    try:
        found, end = _matcher_list("{" + body + "}", 0)
    except GenerateError as exc:
        raise GenerateError(f"--selector {text!r}: {exc}") from None
    if end != len(body) + 2 or not found:
        raise GenerateError(f'--selector {text!r}: not a list of label matchers such as job="mailcanary"')
    if not any(m.label == "job" for m in found):
        raise GenerateError(f"--selector {text!r}: names no job; the rules select the exporter's scrape job")
    for m in found:
        if m.op in ("=~", "!~"):
            try:
                re.compile(m.value)
            except re.error as exc:
                raise GenerateError(f"--selector {text!r}: {m.label}{m.op}: bad regex: {exc}") from None
    return Selector(",".join(m.text for m in found), tuple(found))


# ---- rules -----------------------------------------------------------------------------------------


def _is_default(m: Matcher) -> bool:
    return m.label == "job" and m.op == "=" and m.value == "mailcanary"


def rewrite_expr(expr: str, selector: Selector) -> str:
    """The expression with every ``job="mailcanary"`` matcher replaced by the selector's matchers."""
    out, pos = [], 0
    for m in matchers(expr):
        if _is_default(m):
            out += [expr[pos : m.start], selector.text]
            pos = m.end
    return "".join(out) + expr[pos:]


_PROSE = 'job "mailcanary"'


def _rewrite_text(value: str, selector: Selector) -> str:
    """Annotations: the job named in prose (``job "mailcanary"``) and literal matchers in templates."""
    return value.replace(_PROSE, selector.prose()).replace(DEFAULT_SELECTOR, selector.text)


def render_rules(source: str, selector: Selector, name: str = "rules") -> str:
    """The rule file ``source`` with the selector in place of ``job="mailcanary"``; layout kept."""
    if selector.is_default:
        return source
    root = yaml.compose(source)
    if not isinstance(root, yaml.MappingNode):
        raise GenerateError(f"{name}: not a Prometheus rule file")
    edits: list[tuple[int, int, str]] = []
    for rule in _rule_nodes(root, name):
        for key, value in rule.value:
            field = key.value
            if field == "expr":
                edits += _edits(source, value, lambda t: rewrite_expr(t, selector), name)
            elif field in ("annotations", "labels") and isinstance(value, yaml.MappingNode):
                for _, text in value.value:
                    edits += _edits(source, text, lambda t: _rewrite_text(t, selector), name)
    out, pos = [], 0
    for start, end, new in sorted(edits):
        out += [source[pos:start], new]
        pos = end
    text = _header(selector, name) + "".join(out) + source[pos:]
    _verify(source, text, selector, name)
    return text


def _rule_nodes(root: yaml.MappingNode, name: str) -> Iterator[yaml.MappingNode]:
    for key, groups in root.value:
        if key.value != "groups" or not isinstance(groups, yaml.SequenceNode):
            continue
        for group in groups.value:
            for gkey, rules in group.value:
                if gkey.value == "rules" and isinstance(rules, yaml.SequenceNode):
                    for rule in rules.value:
                        if not isinstance(rule, yaml.MappingNode):
                            raise GenerateError(
                                f"{name}: a rule that is not a mapping (line {rule.start_mark.line + 1})"
                            )
                        yield rule


def _edits(
    source: str, node: yaml.Node, rewrite: Callable[[str], str], name: str
) -> list[tuple[int, int, str]]:
    """The text edits that make ``rewrite`` of this scalar: in the file text itself, where the scalar is
    written as is (plain or block style); a quoted scalar with escapes is refused, never guessed."""
    if not isinstance(node, yaml.ScalarNode) or rewrite(node.value) == node.value:
        return []
    start, end = node.start_mark.index, node.end_mark.index
    raw = source[start:end]
    if node.style in ('"', "'"):
        body = raw[1:-1]
        if yaml.safe_load(raw) != body:  # escapes or folding: positions in value and text differ
            raise GenerateError(
                f"{name}: line {node.start_mark.line + 1}: a quoted scalar with escapes; "
                "write it as a block scalar (|) to let generate rewrite it"
            )
        return [(start + 1, end - 1, rewrite(body))]
    new = rewrite(raw)
    return [(start, end, new)] if new != raw else []


def _header(selector: Selector, name: str) -> str:
    return (
        f"# GENERATED by `mailcanary generate` (mailcanary {__version__}) from the shipped {name}:\n"
        f'# every job="mailcanary" matcher replaced by {selector.text}. Regenerate, do not edit by hand.\n'
    )


def _exprs(doc: Any) -> list[dict[str, Any]]:
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _verify(source: str, generated: str, selector: Selector, name: str) -> None:
    """The generated file parses to the original rules with exactly the rewrite applied, nothing else."""
    want = _exprs(yaml.safe_load(source))
    got = _exprs(yaml.safe_load(generated))
    for old, new in zip(want, got, strict=True):
        expected = dict(old)
        expected["expr"] = rewrite_expr(str(old["expr"]), selector)
        if "annotations" in old:
            expected["annotations"] = {
                k: _rewrite_text(str(v), selector) for k, v in old["annotations"].items()
            }
        if "labels" in old:
            expected["labels"] = {k: _rewrite_text(str(v), selector) for k, v in old["labels"].items()}
        if new != expected:
            raise GenerateError(
                f"{name}: rule {old.get('alert') or old.get('record')}: rewrite did not apply cleanly"
            )
        left = [m for m in matchers(str(new["expr"])) if _is_default(m)]
        if left and not any(_is_default(m) for m in selector.matchers):
            raise GenerateError(
                f'{name}: rule {old.get("alert") or old.get("record")}: job="mailcanary" left'
            )


def rules(kind: str, selector: Selector) -> str:
    """``rules`` or ``slo``: the shipped rule file for ``selector``."""
    filename = RULE_FILES[kind]
    path = shipped_dir("prometheus") / filename
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GenerateError(f"{path}: {exc.strerror or exc}") from None
    return render_rules(source, selector, filename)


# ---- dashboards ------------------------------------------------------------------------------------

_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*job\s*\)")


def render_dashboard(text: str, selector: Selector | None, name: str = "dashboard") -> str:
    """The dashboard with its ``job`` variable limited to ``selector`` (None: the shipped file)."""
    if selector is None:
        return text
    board = json.loads(text)
    variables = [v for v in board.get("templating", {}).get("list", []) if v.get("name") == "job"]
    if len(variables) != 1:
        raise GenerateError(f"{name}: expected one variable named job, found {len(variables)}")
    (var,) = variables
    query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
    found = _LABEL_VALUES.fullmatch(query.strip())
    if found is None:
        raise GenerateError(f"{name}: the job variable's query {query!r} is not label_values(METRIC, job)")
    narrowed = f"label_values({found.group(1)}{{{selector.text}}}, job)"
    if isinstance(var["query"], dict):
        var["query"]["query"] = narrowed
    else:
        var["query"] = narrowed
    var["allValue"] = selector.job_regex()
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def dashboards(selector: Selector | None, probe_selector: Selector | None) -> dict[str, str]:
    """File name -> JSON of every shipped dashboard; the /probe dashboard takes ``probe_selector``."""
    out: dict[str, str] = {}
    for path in sorted(shipped_dir("dashboards").glob("*.json")):
        chosen = probe_selector if path.name == PROBE_DASHBOARD else selector
        out[path.name] = render_dashboard(path.read_text(encoding="utf-8"), chosen, path.name)
    if not out:
        raise GenerateError(f"no dashboards in {shipped_dir('dashboards')}")
    return out


# ---- the command -----------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=("rules", "slo", "dashboards"), help="which shipped files")
    p.add_argument(
        "--selector",
        default=None,
        metavar="MATCHERS",
        help=f"label matchers of the exporter's scrape job, e.g. 'job=\"monitoring/mailcanary\"' "
        f"(rules and slo: default {DEFAULT_SELECTOR}; dashboards: default all jobs, as shipped)",
    )
    p.add_argument(
        "--probe-selector",
        default=None,
        metavar="MATCHERS",
        help="dashboards only: the job of the /probe scrape, for mailcanary-probe.json (default all jobs)",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="PATH",
        help="rules, slo: file to write (default stdout); dashboards: directory to write (required)",
    )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Write the generated file(s); a problem is one line on stderr and exit code 3."""
    out = out or sys.stdout
    try:
        selector = parse_selector(args.selector) if args.selector is not None else None
        if args.what == "dashboards":
            probe = parse_selector(args.probe_selector) if args.probe_selector is not None else None
            if args.output is None:
                raise GenerateError("dashboards: give the directory to write with -o DIR")
            target = Path(args.output)
            target.mkdir(parents=True, exist_ok=True)
            for name, text in dashboards(selector, probe).items():
                (target / name).write_text(text, encoding="utf-8")
                print(target / name, file=out)
            return EXIT_OK
        if args.probe_selector is not None:
            raise GenerateError("--probe-selector applies to dashboards only")
        text = rules(args.what, selector or parse_selector(DEFAULT_SELECTOR))
        if args.output is None:
            out.write(text)
        else:
            Path(args.output).write_text(text, encoding="utf-8")
        return EXIT_OK
    except GenerateError as exc:
        print(f"mailcanary generate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"mailcanary generate: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
