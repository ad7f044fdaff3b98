#!/usr/bin/env bash
# Broken-link check for README.md and docs/*.md: every relative link target must exist, and every
# `#anchor` must name a Markdown heading of its target (GitHub-style slugs) or an HTML id/name.
# External links (http:, https:, mailto:) are not checked. Exits 1, listing each broken link.
# Usage: scripts/check-docs.sh [FILE.md ...]   (default: README.md docs/*.md)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -eq 0 ]; then
  set -- README.md docs/*.md
fi

exec python3 - "$@" <<'PY'
import os
import re
import sys
import unicodedata
from urllib.parse import unquote

FENCE = re.compile(r'^ {0,3}(`{3,}|~{3,})')
HEADING = re.compile(r'^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$')
CODE_SPAN = re.compile(r'(`+)(.+?)(?<!`)\1(?!`)')
INLINE_LINK = re.compile(r'\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+(?:"[^"]*"|\'[^\']*\'))?\s*\)')
REF_DEF = re.compile(r'^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)')
HTML_ID = re.compile(r'<[a-zA-Z][^>]*\s(?:id|name)\s*=\s*["\']([^"\']+)["\']')
HTML_HREF = re.compile(r'<a\s[^>]*href\s*=\s*["\']([^"\']+)["\']')


def lines_outside_fences(text):
    """Yields (line number, line) for lines not inside fenced code blocks."""
    fence = None
    for n, line in enumerate(text.split('\n'), 1):
        m = FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            continue
        if m:
            fence = m.group(1)
            continue
        yield n, line


def heading_text(raw):
    """The text GitHub renders for a heading: code spans verbatim, links as their text, HTML and
    emphasis markers gone."""
    spans = []

    def keep(m):
        spans.append(m.group(2).strip() if m.group(2).strip() else m.group(2))
        return '\x00%d\x00' % (len(spans) - 1)

    s = CODE_SPAN.sub(keep, raw)
    s = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', s)   # links and images: their text
    s = re.sub(r'<[^>]+>', '', s)                        # inline HTML
    s = re.sub(r'\\(.)', r'\1', s)                       # backslash escapes
    s = re.sub(r'\x00(\d+)\x00', lambda m: spans[int(m.group(1))], s)
    return s


def slug(text):
    """github-slugger: lower case, drop everything but letters, digits, marks, spaces, '-' and '_',
    then spaces to hyphens."""
    out = []
    for ch in text.lower():
        cat = unicodedata.category(ch)
        if ch in '-_' or ch == ' ' or cat[0] in 'LNM':
            out.append('-' if ch == ' ' else ch)
    return ''.join(out)


anchor_cache = {}


def anchors(path):
    if path not in anchor_cache:
        found = set()
        counts = {}
        with open(path, encoding='utf-8') as f:
            text = f.read()
        for _, line in lines_outside_fences(text):
            m = HEADING.match(line)
            if m:
                base = slug(heading_text(m.group(2)))
                n = counts.get(base, 0)
                counts[base] = n + 1
                found.add(base if n == 0 else '%s-%d' % (base, n))
            for hid in HTML_ID.findall(line):
                found.add(hid)
        anchor_cache[path] = found
    return anchor_cache[path]


def targets(text):
    for n, line in lines_outside_fences(text):
        m = REF_DEF.match(line)
        if m:
            yield n, m.group(1)
            continue
        plain = CODE_SPAN.sub(lambda m: 'x' * len(m.group(0)), line)
        for m in INLINE_LINK.finditer(plain):
            yield n, m.group(1)
        for m in HTML_HREF.finditer(plain):
            yield n, m.group(1)


broken = []
checked = 0
for doc in sys.argv[1:]:
    with open(doc, encoding='utf-8') as f:
        text = f.read()
    for n, target in targets(text):
        target = target.strip('<>')
        if not target or re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*:', target):
            continue  # external (http:, https:, mailto:, ...)
        checked += 1
        path, _, anchor = target.partition('#')
        path = unquote(path)
        if path:
            base = '.' if path.startswith('/') else os.path.dirname(doc)  # '/': the repository root
            dest = os.path.normpath(os.path.join(base, path.lstrip('/')))
            if not os.path.exists(dest):
                broken.append('%s:%d: %s: no such file or directory (%s)' % (doc, n, target, dest))
                continue
        else:
            dest = doc
        if anchor:
            anchor = unquote(anchor)
            if os.path.isdir(dest) or not dest.endswith('.md'):
                broken.append('%s:%d: %s: an anchor on something that is not a Markdown file' % (doc, n, target))
            elif anchor not in anchors(dest):
                broken.append('%s:%d: %s: no heading in %s has the anchor #%s' % (doc, n, target, dest, anchor))

if broken:
    print('check-docs: %d broken link%s:' % (len(broken), '' if len(broken) == 1 else 's'), file=sys.stderr)
    for b in broken:
        print('  ' + b, file=sys.stderr)
    sys.exit(1)
print('check-docs: %d relative links in %d files, all resolve' % (checked, len(sys.argv) - 1))
PY
