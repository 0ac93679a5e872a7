"""The README and docs/ hold together: links, images and anchors resolve.

Every relative link and image in README.md and docs/*.md must name a file
that exists in the repository, every `#anchor` must name a heading of the
page it points to (GitHub's rule for heading ids), and the README stays a
guide, not a manual: at most 400 lines.
"""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
README_MAX_LINES = 400

FENCE = re.compile(r"^(```|~~~)")
# [text](target) and ![alt](target); the target may carry a "title".
LINK = re.compile(r"(!?)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"<img\b[^>]*\bsrc=\"([^\"]+)\"", re.I)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def _prose_lines(path):
  """(line number, text) of the lines outside fenced code blocks, with
  inline code spans blanked (a link inside backticks is not a link)."""
  fenced = False
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if FENCE.match(line.lstrip()):
        fenced = not fenced
        continue
      if not fenced:
        yield number, re.sub(r"``.*?``|`[^`]*`", "``", line)


def _links(path):
  """(line number, is_image, target) for every link and image of a page."""
  for number, line in _prose_lines(path):
    for match in LINK.finditer(line):
      yield number, match.group(1) == "!", match.group(2)
    for match in HTML_SRC.finditer(line):
      yield number, True, match.group(1)


def _slug(heading):
  """GitHub's id for a heading: its text, lower-cased, with punctuation
  other than '-' and '_' dropped and each space made a '-'."""
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> text
  text = text.replace("`", "").replace("*", "")
  text = re.sub(r"<[^>]+>", "", text).strip().lower()
  return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path):
  seen, anchors = {}, set()
  fenced = False
  with open(path, encoding="utf-8") as f:
    for line in f:
      if FENCE.match(line.lstrip()):
        fenced = not fenced
        continue
      match = None if fenced else HEADING.match(line)
      if match:
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
  return anchors


def _name(path):
  return os.path.relpath(path, ROOT)


def test_the_pages_exist():
  names = {_name(p) for p in PAGES}
  for page in ("spec", "results", "protocols", "data_formats", "serving",
               "tuning", "speed", "distribution", "troubleshooting", "flags"):
    assert f"docs/{page}.md" in names, sorted(names)


def test_the_readme_is_a_guide_not_a_manual():
  with open(README, encoding="utf-8") as f:
    lines = f.read().splitlines()
  assert len(lines) <= README_MAX_LINES, (
      f"README.md has {len(lines)} lines; at most {README_MAX_LINES}: move "
      "details to docs/ and link them")


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_and_image_resolves(page):
  broken = []
  for number, is_image, target in _links(page):
    if SCHEME.match(target) or target.startswith("#"):
      continue
    path = target.split("#", 1)[0].split("?", 1)[0]
    resolved = os.path.normpath(os.path.join(os.path.dirname(page), path))
    if not os.path.exists(resolved):
      kind = "image" if is_image else "link"
      broken.append(f"{_name(page)}:{number}: {kind} {target!r} -> "
                    f"{_name(resolved)} does not exist")
    elif not resolved.startswith(ROOT + os.sep):
      broken.append(f"{_name(page)}:{number}: {target!r} leaves the repository")
    elif is_image and not os.path.isfile(resolved):
      broken.append(f"{_name(page)}:{number}: image {target!r} is not a file")
  assert not broken, "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_anchor_names_a_heading(page):
  broken = []
  for number, _, target in _links(page):
    if SCHEME.match(target) or "#" not in target:
      continue
    path, anchor = target.split("#", 1)
    resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
    if not resolved.endswith(".md") or not os.path.isfile(resolved):
      continue  # a missing file is the other test's failure
    if anchor not in _anchors(resolved):
      broken.append(f"{_name(page)}:{number}: #{anchor} is no heading of "
                    f"{_name(resolved)}")
  assert not broken, "\n".join(broken)


def test_the_link_checker_sees_what_it_should(tmp_path):
  # The checker itself: a link in prose counts, one in code does not, and
  # headings get GitHub's ids.
  page = tmp_path / "p.md"
  page.write_text("# `--protocol=split`, early stopping and `--refit`\n"
                  "See [a](docs/a.md#x) and ![i](img.png).\n"
                  "`[not](a link)`\n```\n[nor](this)\n```\n", encoding="utf-8")
  assert [(n, i, t) for n, i, t in _links(str(page))] == [
      (2, False, "docs/a.md#x"), (2, True, "img.png")]
  assert _anchors(str(page)) == {"--protocolsplit-early-stopping-and---refit"}
  assert _slug("A larger budget: 5 trials × 6,000 steps") == (
      "a-larger-budget-5-trials--6000-steps")
  assert _slug("Office under MARIO's protocol: all models") == (
      "office-under-marios-protocol-all-models")
