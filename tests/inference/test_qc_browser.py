"""`segment --qc`'s page as a reader sees it: opened in a real headless browser (Debian's chromium, which
.ci/run installs where it is missing), every montage image loads at its size, and a screenshot shows the
page with the montages' outlines on it."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from matplotlib import image as mpimg

from tests.inference.helpers import bright_segmenter, write_nifti
from wmhkeras.inference.record import SegmentSettings
from wmhkeras.inference.segment import segment

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine: .ci/run installs Debian's "
                                                "(apt-get install chromium); install it to run this test"),
]
#: Appended to a copy of qc.html: once every image has loaded or failed, their sources and natural sizes
#: are written into the page, for --dump-dom to show.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  Promise.all(images.map(i => i.complete ? null : new Promise(done => { i.onload = i.onerror = done; })))
    .then(() => document.body.setAttribute("data-probe",
      JSON.stringify(images.map(i => [i.getAttribute("src"), i.naturalWidth, i.naturalHeight]))));
});
</script>"""


def _browser(*args, cwd):
    """Headless chromium (as root it needs --no-sandbox), with its own profile in ``cwd``."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={cwd / 'profile'}", "--virtual-time-budget=15000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)


def _volume(seed: int, lesion: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = np.zeros((40, 40, 12), np.float32)
    vol[6:34, 6:34, 2:10] = rng.uniform(0.2, 0.3, (28, 28, 8))  # 'brain' in slices 2..9
    vol[10:10 + lesion, 12:16, 4:6] = 1.0
    return vol


def test_qc_page_loads_every_montage_in_a_browser(tmp_path):
    files = [write_nifti(tmp_path / f"s{i}.nii.gz", _volume(i, 2 + i), np.eye(4)) for i in range(6)]
    out = tmp_path / "out"
    segment(bright_segmenter((48, 48)), files, out, SegmentSettings(qc=True))
    page = out / "qc.html"
    probe = out / "probe.html"  # beside qc.html, so the montages' relative links are the page's own
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    done = _browser("--window-size=1280,8000", "--dump-dom", probe.as_uri(), cwd=tmp_path)
    found = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert found, f"the page never finished loading its images: {done.stderr[-2000:]}"
    images = json.loads(found.group(1).replace("&quot;", '"'))
    montages = {src: (w, h) for src, w, h in images}
    assert sorted(montages) == [f"qc/s{i}.png" for i in range(6)]
    for src, size in montages.items():
        height, width = mpimg.imread(out / src).shape[:2]
        assert size == (width, height), f"{src} did not load in the browser (natural size {size})"
    shot = tmp_path / "page.png"
    taken = _browser("--window-size=1280,1600", f"--screenshot={shot}", page.as_uri(), cwd=tmp_path)
    assert shot.is_file(), taken.stderr[-2000:]
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (1600, 1280) and pixels.std() > 0.05  # not a blank page
    red = pixels[..., 0] - np.maximum(pixels[..., 1], pixels[..., 2]) > 0.3  # thin lines: anti-aliased reds
    assert red.sum() > 50  # the montages' prediction outlines, drawn in red, are on screen
