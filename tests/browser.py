"""Pages checked in a real headless browser (Debian's `chromium`; `.ci/run` installs it).

`inspect_page(path, tmp)` loads a copy of an HTML page with a probe script appended (it only
writes `document.title`, so the layout is the page's own), reads back what the browser drew
(`--dump-dom`), screenshots the page (`--screenshot`), and returns, for every `<img>`: its box
on the page, whether it decoded (`complete`, natural size), how many of its pixels are ink (not
near-white, counted on a canvas by the browser) and the screenshot crop of its box; plus the
texts of the page's `.flag` warnings.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--force-device-scale-factor=1"]
WIDTH = 1400
MAX_HEIGHT = 12000

_PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(img => {
    const r = img.getBoundingClientRect();
    const c = document.createElement("canvas");
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    let ink = -1;
    if (c.width && c.height) {
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const d = ctx.getImageData(0, 0, c.width, c.height).data;
      ink = 0;
      for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] < 700) ink++;
    }
    // the content box (inside the border) is where the image itself is drawn
    return {x: r.left + window.scrollX + img.clientLeft, y: r.top + window.scrollY +
            img.clientTop, w: img.clientWidth, h: img.clientHeight,
            natural: [img.naturalWidth, img.naturalHeight], complete: img.complete, ink: ink,
            src: img.getAttribute("src")};
  });
  const flags = [...document.querySelectorAll(".flag")].map(e => e.textContent);
  document.title = "PROBE" + JSON.stringify({images: images, flags: flags,
      height: document.documentElement.scrollHeight,
      no_image: [...document.querySelectorAll("i")].filter(e => e.textContent === "no image")
                  .length});
});
</script>"""


def _run(args: list[str], tmp: Path) -> str:
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"chromium failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def decode_data_uri(src: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")


def inspect_page(page: Path, tmp: Path) -> dict[str, Any]:
    """What headless Chromium shows of `page` (module docstring)."""
    tmp.mkdir(parents=True, exist_ok=True)
    probe = tmp / "probe.html"
    html = Path(page).read_text(encoding="utf-8")
    probe.write_text(html.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    url = probe.resolve().as_uri()
    # The same width in both runs: the layout (where each image sits) depends on it.
    dom = _run(["--virtual-time-budget=5000", f"--window-size={WIDTH},1000", "--dump-dom", url],
               tmp)
    m = re.search(r"<title>PROBE(.*?)</title>", dom, flags=re.S)
    assert m, f"the probe did not run: {dom[:500]}"
    info = json.loads(m.group(1).replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">").replace("&quot;", '"'))
    height = min(MAX_HEIGHT, int(info["height"]) + 50)
    shot_path = tmp / "shot.png"
    _run(["--virtual-time-budget=5000", f"--window-size={WIDTH},{height}",
          f"--screenshot={shot_path}", url], tmp)
    shot = Image.open(shot_path).convert("RGB")
    for img in info["images"]:
        box = tuple(round(v) for v in (img["x"], img["y"], img["x"] + img["w"],
                                       img["y"] + img["h"]))
        img["crop"] = np.asarray(shot.crop(box), np.float64)
    info["screenshot"] = shot
    return info


def assert_maps_drawn(info: dict[str, Any], n_expected: int) -> None:
    """Every question's map image decoded, has ink, and appears in the screenshot where the
    page put it (the crop matches the image within a small colour tolerance)."""
    maps = [i for i in info["images"] if i["src"].startswith("data:image/png")]
    assert len(maps) == n_expected, (len(maps), n_expected)
    assert not info["no_image"], "a question shows 'no image'"
    for img in maps:
        assert img["complete"] and min(img["natural"]) > 0, img["natural"]
        assert img["ink"] > 0.01 * img["natural"][0] * img["natural"][1], img["ink"]
        want = decode_data_uri(img["src"]).resize((img["crop"].shape[1], img["crop"].shape[0]))
        diff = np.abs(img["crop"] - np.asarray(want, np.float64)).mean()
        assert diff < 12, f"screenshot of the map at {img['x']},{img['y']} differs ({diff:.1f})"
