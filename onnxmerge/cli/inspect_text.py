"""The text of `onnxmerge inspect`: the conv chains, and with --groups the channel groups."""

from __future__ import annotations


def print_inspect(report: dict) -> None:
    """Print inspect's report: each chain's convs, residuals and breaks, then the totals."""
    for c in report["chains"]:
        note = f"  [{c['note']}]" if c["note"] else ""
        print(f"{c['name']}: {c['length']} convs, {c['valid_segments']} valid segments{note}")
        print(f"  input from {c['input_from']}; output to {c['output_to']}")
        res = {r["end"]: r for r in c["residuals"]}
        brk = {b["position"]: b["reason"] for b in c["breaks"]}
        for pos in c["positions"]:
            g = pos["groups"]
            kind = "dw" if g > 1 and g == pos["in_channels"] else (f"g{g}" if g > 1 else "")
            act = (pos["activation"] or "-") + ("+affine" if pos["activation_affine"] else "")
            line = (
                f"  {pos['position']:>3} {pos['conv'] or '(unnamed)':<28} "
                f"{pos['kernel'][0]}x{pos['kernel'][1]}"
                f" s{pos['stride'][0]} d{pos['dilation'][0]} {kind:<4}"
                f" {pos['in_channels']:>5}->{pos['out_channels']:<5}"
                f" @{pos['in_hw'][0]}x{pos['in_hw'][1]:<4} act={act}"
            )
            if pos["position"] in res:
                r = res[pos["position"]]
                line += f"  residual from {r['start']}" + (
                    f" via {r['shortcut']}" if r["shortcut"] else ""
                )
            if pos["position"] in brk:
                line += f"  BREAK: {brk[pos['position']]}"
            print(line)
    for u in report["unmatched"]:
        print(f"not in a chain: {u['conv']} ({u['reason']})")
    t = report["total"]
    print(
        f"total: {t['chains']} chains, {t['convs']} convs, {t['residuals']} residual intervals,"
        f" {t['valid_segments']} valid segments"
    )


def groups_text(report: dict) -> str:
    """inspect --groups as text: each channel group, its width, status, producers, readers."""
    align, source = report.get("align", 1), report.get("align_source", "given")
    lines = [
        f"{report['groups']} channel groups, {report['prunable']} prunable at channel "
        f"alignment {align}, {source} ({report['channels']} prunable channels)"
    ]
    if source.startswith("not probed"):
        lines.append(
            "  (compress cuts in steps of the backend's alignment, which fixes groups narrower "
            "than twice it: --width-align auto probes it, --width-align N sets it)"
        )
    for g in report["list"]:
        status = "prunable" if g["prunable"] else f"fixed: {g['reason']}"
        if g.get("blocks", 1) > 1 and g["prunable"]:
            status += f" in {g['blocks']} equal conv groups"
        lines.append(f"  group {g['id']:>3}  {g['width']:>5} channels  {status}")
        lines.append(
            f"      made by {_names(g['producers'])}; read by {_names(g['consumers'])}"
            + (f"; tied: {_names([(t, 0) for t in g['ties']])}" if g["ties"] else "")
        )
    return "\n".join(lines)


def _names(nodes: list, most: int = 3) -> str:
    """The first node names of [node, offset] pairs, and how many more."""
    names = list(dict.fromkeys(str(n) or "(unnamed)" for n, _ in nodes))  # once per segment
    if not names:
        return "-"
    extra = len(names) - most
    return ", ".join(names[:most]) + (f" and {extra} more" if extra > 0 else "")
