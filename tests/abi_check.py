#!/usr/bin/env python3
"""
abi_check.py BASELINE.abi CURRENT.abi -- the part of the ABI promise
(ABI.md) that abidiff is not asked to judge: the public structs and enums.

  * every public struct (ampr_*) of the baseline still exists, and each of
    its members is still there with the same name, bit offset and type; new
    members may only follow the last old one (struct growth at the end);
  * every enumerator of a public enum keeps its value (new ones may be
    added, none removed or renumbered).

Both files are abidw XML. Prints each violation; exits 1 if any.
"""
import sys
import xml.etree.ElementTree as ET


def load(path):
    root = ET.parse(path).getroot()
    by_id = {}
    for el in root.iter():
        if "id" in el.attrib:
            # prefer full definitions over declaration-only entries
            if el.attrib["id"] not in by_id or el.find("data-member") is not None:
                by_id[el.attrib["id"]] = el
    structs, enums = {}, {}
    for el in root.iter("class-decl"):
        name = el.get("name", "")
        if name.startswith("ampr_") and not name.startswith("ampr__") \
                and el.get("is-declaration-only") != "yes":
            structs[name] = el
    for el in root.iter("enum-decl"):
        name = el.get("name", "")
        if name.startswith("ampr_") and not name.startswith("ampr__"):
            enums.setdefault(name, {}).update(
                {e.get("name"): int(e.get("value")) for e in el.iter("enumerator")})
    return by_id, structs, enums


def type_str(by_id, tid, depth=0):
    el = by_id.get(tid)
    if el is None or depth > 8:
        return "?"
    tag, sub = el.tag, el.get("type-id")
    if tag in ("type-decl", "typedef-decl"):
        return el.get("name")
    if tag == "pointer-type-def":
        return type_str(by_id, sub, depth + 1) + "*"
    if tag == "qualified-type-def":
        return ("const " if el.get("const") == "yes" else "") + type_str(by_id, sub, depth + 1)
    if tag == "array-type-def":
        return "%s[%s]" % (type_str(by_id, el.get("element-type-id"), depth + 1),
                           el.get("size-in-bits"))
    if tag in ("class-decl", "enum-decl", "union-decl"):
        return "%s %s" % (tag[:-5], el.get("name"))
    if tag == "function-type":
        params = [type_str(by_id, p.get("type-id"), depth + 1) for p in el.iter("parameter")]
        ret = el.find("return")
        return "fn(%s)->%s" % (",".join(params), type_str(by_id, ret.get("type-id"), depth + 1)
                               if ret is not None else "?")
    return tag


def members(by_id, el):
    out = []
    for dm in el.findall("data-member"):
        var = dm.find("var-decl")
        out.append((var.get("name"), int(dm.get("layout-offset-in-bits")),
                    type_str(by_id, var.get("type-id"))))
    return out


def main(base_path, cur_path):
    b_ids, b_structs, b_enums = load(base_path)
    c_ids, c_structs, c_enums = load(cur_path)
    bad = []
    for name, el in sorted(b_structs.items()):
        if name not in c_structs:
            bad.append("struct %s: gone" % name)
            continue
        old, new = members(b_ids, el), members(c_ids, c_structs[name])
        if new[:len(old)] != old:
            for i, m in enumerate(old):
                got = new[i] if i < len(new) else None
                if got != m:
                    bad.append("struct %s: member %s (offset %d bits, %s) became %s"
                               % (name, m[0], m[1], m[2], got))
                    break
    for name, vals in sorted(b_enums.items()):
        cur = c_enums.get(name, {})
        for k, v in sorted(vals.items(), key=lambda kv: kv[1]):
            if cur.get(k) != v:
                bad.append("enum %s: %s was %d, now %s" % (name, k, v, cur.get(k, "gone")))
        for k, v in cur.items():
            if v in vals.values() and vals.get(k) != v:
                bad.append("enum %s: value %d reused by %s" % (name, v, k))
    for b in bad:
        print(b)
    print("%d public structs, %d enums checked: %s" % (len(b_structs), len(b_enums),
                                                       "OK" if not bad else "%d violations" % len(bad)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
