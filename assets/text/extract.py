import gzip, json, re, sys
text = gzip.open(sys.argv[1], "rt", encoding="utf-8").read()
# glossary part: entries start with "   :term: ..." lines
start = text.index("   :(TM):") if "   :(TM):" in text else 0
body = text[start:]
paras = re.split(r"\n\s*\n", body)
out = []
for p in paras:
    lines = [l.strip() for l in p.strip().splitlines()]
    if not lines or lines[0].startswith(":"):
        continue
    s = " ".join(lines)
    s = re.sub(r"^\d+\.\s+", "", s)  # sense numbers
    s = re.sub(r"\{([^}]*)\}", r"\1", s)
    s = s.replace("“", '"').replace("”", '"').replace("‘", "'").replace("’", "'").replace("—", " - ")
    s = re.sub(r"\s+", " ", s).strip()
    words = s.split()
    if not 40 <= len(words) <= 110:
        continue
    if any(ord(c) > 127 for c in s) or "http" in s or "[" in s or s.count("/") > 3:
        continue
    if not s[0].isupper() or not s.endswith((".", "!", "?", '"')):
        continue
    out.append(s)
print(len(out), file=sys.stderr)
step = len(out) / 300
chosen = [out[int(i * step)] for i in range(300)]
json.dump({"source": "The Jargon File, version 4.4.7 (29 Dec 2003), Eric S. Raymond et al.; Debian package jargon-text 4.4.7-4.1",
           "license": "public domain: 'This document (the Jargon File) is in the public domain, to be freely used, shared, and modified.'",
           "selection": "definition paragraphs of the glossary with 40-110 words, ASCII only, braces and sense numbers removed, quotes straightened; every k-th of them (k = count / 300) in file order",
           "passages": chosen}, open(sys.argv[2], "w"), indent=1)
