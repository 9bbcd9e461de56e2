#!/usr/bin/python3
"""The client's PIXELS are right after a hidden migration (seamless and reattach).

The spice-gtk client (snapshots=True) writes its display#0 primary surface as a
PPM on request; QMP screendump gives QEMU's own rendering of the same console.
Both are taken back to back (the client polls for the request every 10 ms) and
compared pixel for pixel, text row 0 (pixel rows 0-15, repainted by the guest
on every PIT tick) excluded. The rest is SeaBIOS's static text and must be
identical, except for the blinking VGA text cursor: QEMU toggles it every
266 ms, so a pair taken across a toggle differs in exactly one 9x16 cell.
Such a difference is accepted only if it is explained: QEMU itself renders
that cell in (at least) two phases over ~0.7 s of further screendumps, and
the client's cell is pixel-for-pixel one of them. Anything else fails: a
difference in more than one cell, in a cell QEMU does not toggle, or a cell
that matches no rendering of QEMU's.

  baseline: before any migration, client vs source screendump (proves the
            comparison works; the screen must hold real text);
  (a)       seamless, prepared (bandwidth limited, ~3 s): after the switch and
            the source stopped, client vs destination screendump;
  (b)       switch-host reattach (unprepared, unlimited: the broker relinks a
            fresh backend session and resets the client's display): the same.
Each scenario also gets harness.seamless_scenario's checks.
"""
import sys
import time

from harness import (MigSession, Qemu, check, image_diff, log, no_direct, read_ppm, run,
                     seamless_scenario)

TEXT_ROW_PX = 16        # VGA text: 720x400, 80x25 cells of 9x16 pixels
CELL = (9, 16)
PHASE_DUMPS = 8         # further screendumps, PHASE_GAP_S apart, to see a cell blink
PHASE_GAP_S = 0.09      # QEMU toggles the cursor every 266 ms (VGA_TEXT_CURSOR_PERIOD_MS / 2)
BANDWIDTH = 300000
SETTLE_S = 0.5


def lit_pixels(img, skip_rows):
    """Pixels that are not black, below skip_rows."""
    w, h, px = img
    body = px[skip_rows * w * 3:]
    n = len(body) // 3
    r, g, b = (int.from_bytes(body[k::3], "big") for k in range(3))
    return n - (r | g | b).to_bytes(n, "big").count(0)


def cell_pixels(img, col, row):
    w, h, px = img
    x0, y0 = col * CELL[0], row * CELL[1]
    return b"".join(px[(y * w + x0) * 3:(y * w + x0 + CELL[0]) * 3]
                    for y in range(y0, min(h, y0 + CELL[1])))


def compare(env, client, qemu, label):
    """Client snapshot vs qemu's screendump, row 0 excluded; see the docstring."""
    dump = env.path("%s-%s.ppm" % (label, qemu.name))
    t0 = time.monotonic()
    client.request_snapshot(label)
    t_dump = qemu.screendump(dump)
    snap, meta = client.wait_snapshot(label)
    a, b = read_ppm(snap), read_ppm(dump)
    d = image_diff(a, b, skip_rows=TEXT_ROW_PX, cell=CELL)
    check(d["n"] >= 0, "%s: client surface %s vs screendump %s" % (
        label, d["size"][0], d["size"][1]))
    row0 = image_diff((a[0], TEXT_ROW_PX, a[2][:a[0] * TEXT_ROW_PX * 3]),
                      (b[0], TEXT_ROW_PX, b[2][:b[0] * TEXT_ROW_PX * 3]))["n"]
    lit = lit_pixels(b, TEXT_ROW_PX)
    log("%s: client %dx%d fmt %d (primary-creates %d) vs %s screendump, taken %+.0f ms "
        "apart; row 0 (not compared) %s; differing pixels below row 0: %d%s" % (
            label, meta["width"], meta["height"], meta["format"], meta["primary_creates"],
            qemu.name, (meta["mono"] - t_dump) * 1000,
            "equal" if row0 == 0 else "differs (%d px)" % row0, d["n"],
            "" if not d["n"] else " bbox %s cells(col,row) %s sample [x,y,client,qemu] %s"
            % (d["bbox"], sorted(d["cells"].items())[:40], d["sample"])))
    check(lit > 1000, "%s: the screendump holds almost no text below row 0 (%d lit "
          "pixels): nothing to compare" % (label, lit))
    if d["n"] == 0:
        log("%s: EQUAL (%d lit pixels below row 0)" % (label, lit))
        return
    check(len(d["cells"]) == 1, "%s: client pixels differ from %s's screendump in %d "
          "cells: %d pixels, bbox %s; files %s %s" % (
              label, qemu.name, len(d["cells"]), d["n"], d["bbox"], snap, dump))
    (col, row), = d["cells"]
    phases = [cell_pixels(b, col, row)]
    for i in range(PHASE_DUMPS):
        time.sleep(PHASE_GAP_S)
        p = env.path("%s-phase%d-%s.ppm" % (label, i, qemu.name))
        qemu.screendump(p)
        c = cell_pixels(read_ppm(p), col, row)
        if c not in phases:
            phases.append(c)
    mine = cell_pixels(a, col, row)
    check(len(phases) >= 2 and mine in phases,
          "%s: cell (%d,%d) differs (%d pixels) and is not a cursor blink: QEMU renders "
          "it in %d phase(s) over %.1f s, the client's cell matches %s; files %s %s" % (
              label, col, row, d["n"], len(phases), PHASE_DUMPS * PHASE_GAP_S,
              "none" if mine not in phases else "phase %d" % phases.index(mine),
              snap, dump))
    log("%s: EQUAL except cursor cell (%d,%d): QEMU renders it in %d phases, the "
        "client shows phase %d (snapshot and screendump straddled a blink)" % (
            label, col, row, len(phases), phases.index(mine)))


def scenario(env, tag, prepare):
    src = Qemu(env, name="src-" + tag, all_devices=False).start()
    dst = Qemu.dest_like(src, "dst-" + tag).start()
    ms = MigSession(env, src, tag=tag, snapshots=True)
    # "ready" = every channel opened, not yet the first picture: wait for the
    # first display update, then give the initial full image time to land
    ms.client.wait_event(lambda e: e["ev"] == "inval", 5, what="first display update")
    time.sleep(SETTLE_S)
    compare(env, ms.client, src, tag + "-baseline")
    res = seamless_scenario(
        env, src, dst, max_bandwidth=BANDWIDTH if prepare else None, tag=tag, ms=ms,
        prepare=prepare, expect_kind="prepared" if prepare else None, after=1.0,
        settled=lambda m: compare(env, m.client, dst, tag + "-after"))
    lines = [ln.split(" ", 1)[-1] for ln in ms.broker.log_text().splitlines()
             if "reattach" in ln or "migrated " in ln or "switched host" in ln]
    log("%s broker: %s" % (tag, lines[:6]))
    if not prepare:
        check(any("reattached to" in ln for ln in lines),
              "%s: the broker did not take the reattach path: %s" % (tag, lines))
    log("%s figures: %s" % (tag, res))


def test(env):
    no_direct(env)
    scenario(env, "pxseam", prepare=True)
    scenario(env, "pxreat", prepare=False)


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
