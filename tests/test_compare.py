"""toolkit compare on the real default model: report, cache, fairness, errors."""

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from toolkit.errors import ConfigError, DataError
from toolkit.evaluate.compare import CompareSettings, compare, parse_system
from toolkit.params import DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def test_split(tmp_path_factory) -> Path:
    from toolkit.data.build import BuildOptions, build

    out = tmp_path_factory.mktemp("data")
    build([ROOT / "data" / "sample" / "abstracts.jsonl"], out=out, options=BuildOptions(split="80,10,10", seed=0, tokenizer="words"))
    return out / "test.jsonl"


@pytest.fixture(scope="module")
def params_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("params")
    (d / "hot.yaml").write_text("# hot\nparameters: {temperature: 1.3, top_p: 1.0}\n")
    (d / "cold.yaml").write_text("# cold\nparameters: {temperature: 0.2}\n")
    return d


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs.get("src", ""))
        for key in ("href", "src"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.links.append(attrs[key])


def test_report_and_cache(tmp_path, test_split, params_files):
    out = tmp_path / "cmp"
    common = dict(settings=CompareSettings(data=test_split, prompts=3), out=out, params=DEFAULTS.replace(max_tokens=12))
    assert compare([f"hot=smollm2@{params_files / 'hot.yaml'}"], **common) == 0
    result = json.loads((out / "results.json").read_text())
    assert [s["label"] for s in result["systems"]] == ["base", "hot"]  # the zero-shot base comes first
    hot = result["systems"][1]
    assert hot["params"]["temperature"] == 1.3 and hot["params"]["seed"] == DEFAULTS.seed
    assert hot["params"]["max_tokens"] == 12  # the params file goes on top of this run's options
    for metric in ("bertscore_f1", "bertscore_p", "bertscore_r", "rouge_l", "bleu"):
        ci = hot["metrics"][metric]
        assert ci["low"] <= ci["mean"] <= ci["high"]
        assert set(hot["vs_reference"][metric]) >= {"diff", "p_value", "win_rate", "significant"}
    assert len(result["per_example"]) == 3 and set(result["per_example"][0]["outputs"]) == {"base", "hot"}
    md = (out / "report.md").read_text()
    assert "BERTScore F1" in md and "95% CI" in md and "## Example generations" in md
    # the machine the numbers were measured on (llama.cpp picks different kernels per CPU)
    assert result["machine"]["cpu"] and "extra_bufts" in result["machine"]
    assert md.count("Measured on: ") == 1 and "Measured on: " in (out / "report.html").read_text()
    # self-contained HTML: every image embedded as a real PNG, nothing fetched from the network
    page = _Images()
    page.feed((out / "report.html").read_text())
    assert len(page.srcs) >= 2 and not page.links
    for src in page.srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # one more system: only that one generates
    compare([f"hot=smollm2@{params_files / 'hot.yaml'}", f"cold=smollm2@{params_files / 'cold.yaml'}"], **common)
    again = json.loads((out / "results.json").read_text())
    assert again["generated"] == {"base": 0, "hot": 0, "cold": 3}
    assert again["systems"][1]["metrics"] == result["systems"][1]["metrics"]
    # --again repeats the stored run: same systems, parameters, prompts and data, nothing generated,
    # even when this command's own defaults differ (max_tokens 256, all prompts, another data path)
    assert compare([], out=out, again=True) == 0
    repeated = json.loads((out / "results.json").read_text())
    assert repeated["generated"] == {"base": 0, "hot": 0, "cold": 0}
    assert [s["params"] for s in repeated["systems"]] == [s["params"] for s in again["systems"]]
    assert repeated["per_example"] == again["per_example"] and repeated["settings"] == again["settings"]
    with pytest.raises(ConfigError, match="takes no systems"):
        compare(["x=smollm2"], out=out, again=True)


def test_again_reads_the_settings_an_earlier_compare_wrote(tmp_path):
    """`settings` in results.json holds CompareSettings' and JudgeSettings' fields, the JSON the two hand
    lists wrote before: such a file reads back into the dataclasses and is written back the same."""
    from toolkit.evaluate.compare import JudgeSettings, stored_run, stored_settings

    earlier = {"data": "d/test.jsonl", "backend": "llamacpp", "url": "", "prompts": 3, "scorer": "minilm", "scorer_layer": 0,
               "parallel": 0, "allow_mixed_quant": False,
               "judge": {"model": "smollm2", "backend": "llamacpp", "url": "", "max_tokens": 4, "prompt": "j.txt"}}
    systems = [{"label": "base", "model": "smollm2", "params": DEFAULTS.to_dict(), "params_source": "defaults"}]
    (tmp_path / "results.json").write_text(json.dumps({"systems": systems, "settings": earlier}))
    [base], settings, judge = stored_run(tmp_path, [])
    assert base.label == "base" and base.params == DEFAULTS
    assert settings == CompareSettings(data=Path("d/test.jsonl"), prompts=3)
    assert judge == JudgeSettings("smollm2", max_tokens=4, prompt=Path("j.txt"))
    assert {k: v for k, v in stored_settings(settings, judge).items() if k in earlier} == earlier
    assert stored_settings(settings, JudgeSettings())["judge"] is None
    (tmp_path / "results.json").write_text(json.dumps({"systems": systems, "settings": {**earlier, "prompt": 3, "judge": None}}))
    with pytest.raises(ConfigError, match="settings: unknown setting 'prompt'"):
        stored_run(tmp_path, [])


def test_again_needs_a_stored_run(tmp_path):
    with pytest.raises(ConfigError, match="no compare run to repeat"):
        compare([], out=tmp_path, again=True)
    (tmp_path / "results.json").write_text(json.dumps({"systems": []}))  # written before settings were stored
    with pytest.raises(ConfigError, match="before compare stored its options"):
        compare([], out=tmp_path, again=True)
    (tmp_path / "results.json").write_text('{"systems": [')  # cut short
    with pytest.raises(DataError, match="cannot read"):
        compare([], out=tmp_path, again=True)


def test_fairness_refuses_mixed_quantization(tmp_path, test_split):
    from toolkit.export.convert import export

    export("smollm2", out=tmp_path / "g", quant=[])  # f16 next to the embedded Q4_1
    with pytest.raises(ConfigError, match="different quantization types"):
        compare([f"tuned={tmp_path / 'g' / 'SmolLM2-135M-Instruct-f16.gguf'}"], CompareSettings(data=test_split), out=tmp_path / "c")


@pytest.mark.parametrize("spec", ["noequals", "=model", "label="])
def test_bad_system_spec(spec):
    with pytest.raises(ConfigError, match="LABEL=MODEL"):
        parse_system(spec, DEFAULTS)


def test_duplicate_labels_missing_references_and_bad_parallel(tmp_path, test_split):
    with pytest.raises(ConfigError, match="labels repeat"):
        compare(["base=smollm2"], CompareSettings(data=test_split), out=tmp_path / "c")
    noref = tmp_path / "n.jsonl"
    noref.write_text('{"id": "1", "prompt": "p"}\n')
    with pytest.raises(DataError, match="reference"):
        compare([], CompareSettings(data=noref), out=tmp_path / "c")
    with pytest.raises(ConfigError, match="parallel=70 is outside"):
        compare([], CompareSettings(data=test_split, parallel=70), out=tmp_path / "c")
    assert not (tmp_path / "c").exists()


def _no_browser() -> bool:
    from toolkit.evaluate.browser import find_browser

    return find_browser() is None


@pytest.mark.skipif(_no_browser(), reason="no headless Chromium (Debian: apt-get install chromium; .ci/run installs it)")
def test_report_renders_with_its_plots_in_a_real_browser(tmp_path, test_split, params_files):
    from PIL import Image

    from toolkit.evaluate.browser import render

    out = tmp_path / "cmp"
    compare([f"hot=smollm2@{params_files / 'hot.yaml'}"], CompareSettings(data=test_split, prompts=2), out=out,
            params=DEFAULTS.replace(max_tokens=8), screenshot=True)
    shot = Image.open(out / "report.png").convert("RGB")
    assert shot.size == (1280, 2400)
    assert len(shot.getcolors(maxcolors=1 << 20)) > 100, "a page of plots has many colours, a blank one a few"
    # the check can fail: an image the page cannot load is not counted as shown
    broken = tmp_path / "broken.html"
    broken.write_text("<!doctype html><html><body><img src='missing.png'><img src='" + _tiny_png() + "'></body></html>")
    shown = render(broken)
    assert (shown.images, shown.decoded) == (2, 1)


def _tiny_png() -> str:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_reports_name_the_machine_and_who_generated():
    from toolkit.evaluate.machine import measured_line, measured_on

    local = {"cpu": "Some CPU", "cores": 2, "simd": ["avx2", "fma"], "llama_cpp_python": "0.3.0", "extra_bufts": False}
    assert measured_line(local) == "Measured on: Some CPU, 2 cores, avx2 fma; llama-cpp-python 0.3.0, extra buffer types off"
    served = measured_on("ollama")  # no probe: no model is loaded here
    assert "extra_bufts" not in served and served["generations"] == "ollama server"
    assert measured_line(served).endswith("(generations by the ollama server)")


SHIPPED = ["bertscore_f1", "bertscore_p", "bertscore_r", "rouge_l", "bleu"]


def _scored_systems(names: list[str]) -> tuple[list, list]:
    """Two systems with made-up outputs and scores on `names`, as compare holds them after scoring."""
    from types import SimpleNamespace

    from toolkit.evaluate.compare import System

    examples = [SimpleNamespace(id=f"ex{i}", prompt=f"prompt {i}", response=f"reference {i}") for i in range(4)]
    systems = []
    for k, label in enumerate(("base", "tuned")):
        outputs = [{"text": f"{label} answer {i}", "finish_reason": "stop" if i else "length", "completion_tokens": 5 + i + k,
                    "seconds": 0.5} for i in range(4)]
        scores = {m: [0.1 * (i + 1) + 0.05 * k * j for i in range(4)] for j, m in enumerate(names)}
        systems.append(System(label, f"models/{label}.gguf", DEFAULTS, "defaults", outputs, scores))
    return systems, examples


def test_the_typed_result_serialises_as_before_and_every_renderer_lists_a_registered_metric(tmp_path, capsys, monkeypatch):
    from extra_metric import LENGTH_RATIO, registered

    from toolkit.console import out as console
    from toolkit.evaluate.compare_report import make_plots, print_table, render_html, render_markdown, summarise
    from toolkit.evaluate.metrics import Metric

    monkeypatch.setattr(console, "_width", 200)  # one line per row: the headers are searched below
    hidden = Metric("hidden_len", "Hidden length", LENGTH_RATIO.scorer, shown=False)
    with registered(LENGTH_RATIO, hidden):
        systems, examples = _scored_systems([*SHIPPED, "length_ratio", "hidden_len"])
        result = summarise(systems, examples, seed=0)
        result.generated, result.settings, result.seconds = {"base": 4, "tuned": 0}, {"data": "test.jsonl"}, 1.5
        data = json.loads(json.dumps(result.to_dict()))
        plots = make_plots(result, tmp_path / "plots")
        md, page = render_markdown(result, {k: f"plots/{v.name}" for k, v in plots.items()}), render_html(result, plots)
        print_table(result)
    # results.json's shape: keys in their order, no judge or machine key when there is none
    assert list(data) == ["examples", "reference_system", "systems", "per_example", "human", "generated", "settings", "seconds"]
    base, tuned = data["systems"]
    assert list(tuned) == ["label", "model", "params", "params_source", "metrics", "mean_output_tokens", "stopped_by_length",
                           "tokens_per_second", "vs_reference"]
    assert "vs_reference" not in base and base["params"] == DEFAULTS.to_dict() and base["stopped_by_length"] == 1
    assert list(tuned["metrics"]) == list(tuned["vs_reference"]) == [*SHIPPED, "length_ratio", "hidden_len"]
    assert set(tuned["metrics"]["bleu"]) == {"mean", "low", "high", "level"}
    assert tuned["vs_reference"]["length_ratio"]["diff"]["mean"] == pytest.approx(0.05 * 5)
    assert set(tuned["vs_reference"]["bleu"]) >= {"diff", "p_value", "win_rate", "significant"}
    first = data["per_example"][0]
    assert list(first) == ["id", "prompt", "reference", "outputs"]
    assert list(first["outputs"]["tuned"]) == ["text", "finish_reason", "tokens", *SHIPPED, "length_ratio", "hidden_len"]
    assert first["outputs"]["tuned"]["tokens"] == 6 and first["outputs"]["tuned"]["length_ratio"] == pytest.approx(0.35)
    # every table of the report has a column for each metric; the terminal table and box plots the shown ones
    assert md.count("Length ratio") == 2 and md.count("Hidden length") == 2 and "BERTScore F1 0.100" in md
    assert page.count("<th>Length ratio</th>") == 2 and page.count("<th>Hidden length</th>") == 2
    table = capsys.readouterr().out
    assert "Length ratio" in table and "Δ F1 vs ref" in table and "BLEU" in table
    assert "Hidden length" not in table and "BERTScore P" not in table
    assert sorted(p.name for p in plots.values()) == ["bertscore_f1_hist.png", "boxplots.png"]


@pytest.mark.slow
def test_a_registered_metric_reaches_results_report_and_table_end_to_end(tmp_path, test_split, params_files, capsys, monkeypatch):
    from extra_metric import LENGTH_RATIO, length_ratio, registered

    from toolkit.console import out as console

    monkeypatch.setattr(console, "_width", 200)
    out = tmp_path / "cmp"
    with registered(LENGTH_RATIO):
        assert compare([f"hot=smollm2@{params_files / 'hot.yaml'}"], CompareSettings(data=test_split, prompts=2), out=out,
                       params=DEFAULTS.replace(max_tokens=8)) == 0
    result = json.loads((out / "results.json").read_text())
    hot = result["systems"][1]
    assert list(hot["metrics"]) == list(hot["vs_reference"]) == [*SHIPPED, "length_ratio"]
    ci = hot["metrics"]["length_ratio"]
    assert 0 <= ci["low"] <= ci["mean"] <= ci["high"] <= 1
    for ex in result["per_example"]:  # each stored score is the metric of that output against that reference
        for o in ex["outputs"].values():
            assert o["length_ratio"] == pytest.approx(length_ratio(None, [o["text"]], [ex["reference"]])[0])
    assert (out / "report.md").read_text().count("Length ratio") == 2
    assert (out / "report.html").read_text().count("<th>Length ratio</th>") == 2
    assert "Length ratio" in capsys.readouterr().out
