"""The docs: README.md and docs/*.md.

- the site builds with `mkdocs build --strict` (every page in the nav, no broken link or anchor);
- every relative link in README.md and docs/*.md resolves to a file, and its #anchor to a heading of that file
  (MkDocs' slug rule, checked against the ids of the site it builds);
- every command line quoted in them (```bash blocks, `$ ` lines of ```console blocks, inline code) that starts
  with `python -m ms_gpt4image`, `python -m export`, `python -m ms_gpt4image.report`, `make` or a script path
  names a subcommand / make target / script that exists, and uses only flags that command accepts (read from
  its `--help`, which imports neither mindspore nor torch).
"""
import functools
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS.glob("*.md"))
MARKDOWN = [README, *PAGES]

# Names a doc may quote before their command or target exists (none now); flags of these are not checked.
NOT_YET = set()

MODULES = ("export", "ms_gpt4image", "ms_gpt4image.report")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
PYTHON = re.compile(r"^(?:\S*/)?python(?:3(?:\.\d+)?)?$")
FLAG = re.compile(r"^(--?[A-Za-z][\w-]*)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
COMMAND_LANGS = {"bash", "sh", "shell", "console"}


# ---------------------------------------------------------------- markdown parsing

def split_markdown(text):
    """(prose lines with fenced blocks blanked, [(lang, [lines])] of the fenced blocks)."""
    prose, blocks, fence, lang, body = [], [], None, None, []
    for line in text.split("\n"):
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence, lang, body = m.group(1), m.group(2).lower(), []
                prose.append("")
            else:
                prose.append(line)
        else:
            prose.append("")
            if m and m.group(1).startswith(fence) and not m.group(2):
                blocks.append((lang, body))
                fence = None
            else:
                body.append(line)
    return prose, blocks


def paragraphs(prose_lines):
    return [p for p in re.split(r"\n\s*\n", "\n".join(prose_lines)) if p.strip()]


CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)


def inline_code(prose_lines):
    for para in paragraphs(prose_lines):
        for m in CODE_SPAN.finditer(para):
            yield " ".join(m.group(2).split())


def without_code(prose_lines):
    return CODE_SPAN.sub("CODE", "\n".join(prose_lines))


def slugify(text):
    """Python-Markdown's toc slug, MkDocs' default: ASCII, punctuation dropped, lower case, runs of spaces and
    hyphens to one '-'."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def heading_text(raw):
    raw = re.sub(r"\s+#+\s*$", "", raw.strip())
    raw = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)     # links -> their text
    raw = re.sub(r"<[^>]+>", "", raw)                         # inline HTML
    return raw.replace("`", "")


def heading_slugs(text):
    """The ids MkDocs gives the headings of a page, in order (a repeated slug gets _1, _2, ...)."""
    prose, _ = split_markdown(text)
    ids = []
    for line in prose:
        m = re.match(r"^(#{1,6})\s+(.+)$", line)
        if m:
            slug = slugify(heading_text(m.group(2)))
            base, n = slug, 0
            while slug in ids or not slug:
                n += 1
                slug = f"{base}_{n}"
            ids.append(slug)
    return ids


# ---------------------------------------------------------------- links

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^\s*\[(?!\^)[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)  # not footnotes ([^x]: text)


def link_problems(path, text):
    prose, _ = split_markdown(text)
    plain = without_code(prose)
    problems = []
    for target in LINK.findall(plain) + REF_LINK.findall(plain):
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target) or target.startswith("//"):
            continue                                          # http(s):, mailto:, ...
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{path.name}: link '{target}': no file {dest}")
            continue
        if anchor:
            if dest.suffix != ".md":
                problems.append(f"{path.name}: link '{target}': an anchor into a file that is not markdown")
            elif anchor not in heading_slugs(dest.read_text(encoding="utf-8")):
                problems.append(f"{path.name}: link '{target}': no heading '#{anchor}' in {dest.name} "
                                f"(its headings: {', '.join(heading_slugs(dest.read_text(encoding='utf-8')))})")
    return problems


# ---------------------------------------------------------------- command lines

def command_lines(text):
    """Every quoted command line: logical lines of bash blocks, `$ ` lines of console blocks, inline code."""
    prose, blocks = split_markdown(text)
    for lang, body in blocks:
        if lang not in COMMAND_LANGS:
            continue
        logical, current = [], ""
        for line in body:
            current += line.rstrip()
            if current.endswith("\\"):
                current = current[:-1] + " "
                continue
            logical.append(current.strip())
            current = ""
        if current.strip():
            logical.append(current.strip())
        for line in logical:
            if lang == "console":
                if line.startswith("$ "):
                    yield line[2:]
            elif line and not line.startswith("#"):
                yield line
    yield from inline_code(prose)


def tokenize(line):
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
        lexer.whitespace_split, lexer.commenters = True, "#"
        return list(lexer)
    except ValueError:                                        # unbalanced quotes: good enough without them
        return re.sub(r"(^|\s)#.*$", "", line).split()


def segments(tokens):
    """Split at && || ; and drop leading VAR=value assignments."""
    seg = []
    for tok in tokens + ["&&"]:
        if tok in ("&&", "||", ";"):
            while seg and ENV_ASSIGNMENT.match(seg[0]):
                seg.pop(0)
            if seg:
                yield seg
            seg = []
        else:
            seg.append(tok)


def used_flags(args):
    flags = []
    for i, tok in enumerate(args):
        if tok == "|" and i + 1 < len(args) and not args[i + 1].lstrip("[(").startswith("-"):
            break                                             # a shell pipe, not an alternative inside [...]
        if tok in (">", ">>", "2>", "2>&1"):
            break
        m = FLAG.match(tok.lstrip("[("))
        if m:
            flags.append(m.group(1))
    return flags


def flags_in(text):
    return set(re.findall(r"(?:^|[\s\[(,|])(--?[A-Za-z][\w-]*)", text))


@functools.lru_cache(maxsize=None)
def help_text(module, sub=None):
    args = [sys.executable, "-m", module] + ([sub] if sub else []) + ["--help"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), GLOG_v="3")
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return None
    return proc.stdout


@functools.lru_cache(maxsize=None)
def subcommands(module):
    text = help_text(module)
    m = re.search(r"\{([\w,-]+)\}", text or "")
    return set(m.group(1).split(",")) if m else set()


@functools.lru_cache(maxsize=None)
def make_targets():
    text = (ROOT / "Makefile").read_text()
    targets = set()
    for m in re.finditer(r"^([A-Za-z0-9][\w.-]*(?:[ \t]+[A-Za-z0-9][\w.-]*)*)[ \t]*:(?!=)", text, re.M):
        targets.update(m.group(1).split())
    return targets


@functools.lru_cache(maxsize=None)
def script_flags(rel):
    """Flags a script documents: argparse's add_argument names (.py), or the usage text of a shell script (its
    leading comment block and every line that says 'usage', with continuation lines). None: no usage text."""
    text = (ROOT / rel).read_text(encoding="utf-8")
    if rel.endswith(".py"):
        flags = set()
        for m in re.finditer(r"add_argument\(\s*((?:[\"'][^\"']+[\"']\s*,\s*)+)", text):
            flags.update(f for f in re.findall(r"[\"']([^\"']+)[\"']", m.group(1)) if f.startswith("-"))
        return flags or None
    lines = text.split("\n")
    usage = []
    for line in lines[1 if lines[0].startswith("#!") else 0:]:
        if not line.startswith("#"):
            break
        usage.append(line)
    for i, line in enumerate(lines):
        if re.search(r"usage", line, re.I):
            usage.append(line)
            j = i
            while lines[j].rstrip().endswith("\\") and j + 1 < len(lines):
                j += 1
                usage.append(lines[j])
    usage_text = "\n".join(usage)
    return flags_in(usage_text) if re.search(r"usage", usage_text, re.I) else None


def check_module(module, args, where):
    problems = []
    if module == "ms_gpt4image.report":
        sub = None
    else:
        if not args or args[0].startswith("-") or args[0] == "...":
            return problems
        names = [n for n in args[0].split("|") if n and n != "..."]
        known = subcommands(module)
        missing = [n for n in names if n not in known and (module, n) not in NOT_YET]
        if missing:
            return [f"{where}: `python -m {module} {args[0]}`: no subcommand {', '.join(missing)} "
                    f"(there are: {', '.join(sorted(known))})"]
        if len(names) != 1 or names[0] not in known:
            return problems
        sub, args = names[0], args[1:]
    text = help_text(module, sub)
    if text is None:
        return [f"{where}: `python -m {module} {sub or ''} --help` failed"]
    accepted = flags_in(text)
    for flag in used_flags(args):
        if flag not in accepted:
            problems.append(f"{where}: `python -m {module}{' ' + sub if sub else ''}` does not accept {flag}")
    return problems


def check_script(rel, args, where):
    rel = rel.lstrip("./") if rel.startswith("./") else rel
    if not (ROOT / rel).is_file():
        return [f"{where}: no script {rel}"]
    if rel == "scripts/launch.py":                           # `python -m ms_gpt4image` as a file
        return check_module("ms_gpt4image", args, where)
    flags = used_flags(args)
    if not flags:
        return []
    documented = script_flags(rel)
    if documented is None:
        return [f"{where}: {rel} takes flags {flags} but has no usage text to check them against"]
    return [f"{where}: {rel} does not document {flag}" for flag in flags if flag not in documented]


def command_problems(path, text):
    problems = []
    for line in command_lines(text):
        shown = " ".join(line.split())
        where = f"{path.name}: `{shown if len(shown) < 90 else shown[:87] + '...'}`"
        for seg in segments(tokenize(line)):
            head, rest = seg[0], seg[1:]
            if PYTHON.match(head) and len(rest) >= 2 and rest[0] == "-m" and rest[1] in MODULES:
                problems += check_module(rest[1], rest[2:], where)
            elif PYTHON.match(head) and rest and re.match(r"^(\./)?(scripts|tests)/\S+\.py$", rest[0]):
                problems += check_script(rest[0], rest[1:], where)
            elif head == "make":
                for target in rest:
                    if target.startswith("-") or "=" in target:
                        continue
                    if target not in make_targets() and ("make", target) not in NOT_YET:
                        problems.append(f"{where}: no make target '{target}'")
            elif re.match(r"^(\./)?scripts/", head):
                problems += check_script(head, rest, where)
    return problems


# ---------------------------------------------------------------- the tests

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return out, proc


def test_site_builds_strict(site):
    out, proc = site
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    warnings = [line for line in log.splitlines() if re.search(r"\bWARNING\b", line)]
    assert not warnings, "\n".join(warnings)
    assert (out / "index.html").is_file()


def test_every_page_is_in_the_nav():
    text = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r":\s*([\w./-]+\.md)\s*$", text, re.M))
    assert listed == {p.name for p in PAGES}, f"in docs/ but not in the nav: {sorted({p.name for p in PAGES} - listed)}; " \
                                              f"in the nav but not in docs/: {sorted(listed - {p.name for p in PAGES})}"


def test_heading_slugs_match_what_mkdocs_generates(site):
    out, proc = site
    assert proc.returncode == 0, "the site did not build (see test_site_builds_strict)"
    for page in PAGES:
        html_file = out / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        built = re.findall(r"<h[1-6][^>]*\sid=\"([^\"]+)\"", html_file.read_text(encoding="utf-8"))
        assert heading_slugs(page.read_text(encoding="utf-8")) == built, page.name


def test_relative_links_and_anchors_resolve():
    problems = [p for path in MARKDOWN for p in link_problems(path, path.read_text(encoding="utf-8"))]
    assert not problems, "\n".join(problems)


def test_quoted_commands_exist_with_their_flags():
    problems = [p for path in MARKDOWN for p in command_problems(path, path.read_text(encoding="utf-8"))]
    assert not problems, "\n".join(problems)


def test_lists_start_after_a_blank_line():
    """Python-Markdown (MkDocs) reads a list that directly follows a paragraph line as part of the paragraph;
    GitHub does not, so the README would look right and the site wrong."""
    problems = []
    for page in PAGES:
        prose, _ = split_markdown(page.read_text(encoding="utf-8"))
        for i in range(1, len(prose)):
            if re.match(r"^(?:[-*+]|\d+\.)\s", prose[i]) and prose[i - 1].strip():
                j = i - 1                                     # walk back to the block's first line
                while j > 0 and prose[j - 1].strip():
                    j -= 1
                if not re.match(r"^\s*(?:[-*+]|\d+\.)\s", prose[j]):
                    problems.append(f"{page.name}:{i + 1}: {prose[i][:60]}")
    assert not problems, "a list needs a blank line before it:\n" + "\n".join(problems)


def test_readme_starts_with_the_two_commands_and_stays_short():
    text = README.read_text(encoding="utf-8")
    _, blocks = split_markdown(text)
    first = [line.split("#")[0].strip() for line in blocks[0][1]]
    assert first[:2] == ["make demo", "make test"], first
    assert len(text.splitlines()) < 150, "README.md is the first screen: move details into docs/"
    assert "docs/inspect_demo_tsne.png" not in text or (DOCS / "inspect_demo_tsne.png").is_file()


def test_the_checks_catch_what_they_should(tmp_path):
    """The checkers themselves: a broken link, a wrong anchor, a misspelled flag, an unknown subcommand, an
    unknown make target and a missing script are all reported."""
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "page.md"
    text = ("# Page\n\n[ok](other.md#a-section) [gone](missing.md) [bad anchor](other.md#no-such-section)\n\n"
            "```bash\npython -m export describe --source cifar10 \\\n    --backnd template --out d.jsonl\n"
            "python -m ms_gpt4image trian -c configs/X.yaml\nmake no-such-target\nscripts/no_such.sh --x\n"
            "scripts/demo.sh --quick --sedes 3\n```\n\n"
            "Inline: `python -m ms_gpt4image predict --model m.mindir --top-k 3` and `make demo`.\n")
    page.write_text(text)
    links = link_problems(page, text)
    assert len(links) == 2 and any("missing.md" in p for p in links) and any("no-such-section" in p for p in links)
    commands = command_problems(page, text)
    reported = [p.rsplit("`", 1)[-1] for p in commands]                # what each problem names, after the quote
    for expected in ("--backnd", "trian", "no-such-target", "no_such.sh", "--sedes", "--top-k"):
        assert sum(expected in r for r in reported) == 1, (expected, commands)
    assert len(commands) == 6, commands                       # `make demo`, --source, --model, -c: fine
    assert slugify("Reproducing the paper's tables: scripts/reproduce.sh") == \
        "reproducing-the-papers-tables-scriptsreproducesh"
    assert heading_slugs("# A\n\n## A\n\n```\n# not a heading\n```\n") == ["a", "a_1"]
