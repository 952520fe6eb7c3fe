"""bench/peers.py's late-interaction settings and goal line (pure logic; the peers themselves need their venvs)."""

import sys

from tests.ray.conftest import REPO

sys.path.insert(0, str(REPO))

from bench import peers  # noqa: E402


def test_settings_are_keywords_of_the_peers_search():
    assert peers.parse_settings("default;n_ivf_probe=16,n_full_scores=8192;centroid_score_threshold=0.4") == [
        {}, {"n_ivf_probe": 16, "n_full_scores": 8192}, {"centroid_score_threshold": 0.4}]
    assert peers._label({}) == "its defaults"
    assert peers._label({"nprobe": 32, "t_prime": 50000}) == "nprobe 32, t_prime 50,000"


def test_summary_compares_the_fastest_rows_at_the_recall_bar():
    row = lambda search, qps, recall: {"search": search, "queries/s": qps, "R@100 vs exact": recall}
    rows = [row("rayrank fp16 exact", 5.0, 1.0), row("rayrank fp16 IVF", 70.0, 0.977),
            row("rayrank fp16 IVF fast", 96.0, 0.787), row("FastPlaid its defaults", 40.0, 0.96),
            row("xtr-warp-rs its defaults", 400.0, 0.6), {"search": "xtr-warp-rs: stopped", "queries/s": ""}]
    line = peers.late_summary(rows)
    assert "rayrank fp16 IVF 70.0" in line and "FastPlaid its defaults 40.0" in line
    assert "1.75×" in line and "met" in line and "not met" not in line
    assert "no peer setting reached" in peers.late_summary(rows[:3])
    assert peers.late_summary(rows[3:]).startswith("no rayrank setting")
