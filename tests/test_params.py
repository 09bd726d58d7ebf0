import pytest

from toolkit.errors import ConfigError
from toolkit.params import DEFAULTS, SPECS, DecodingParams


def test_defaults_are_valid_and_map_to_every_backend():
    p = DecodingParams()
    options = p.to_ollama_options()
    # Ollama must always get these explicitly, never its own defaults
    for key in ("temperature", "top_p", "num_predict", "repeat_penalty", "seed", "num_ctx"):
        assert key in options
    assert options["num_predict"] == p.max_tokens
    assert p.to_llamacpp()["max_tokens"] == p.max_tokens
    assert "num_ctx" not in p.to_openai()


@pytest.mark.parametrize("field,value", [("top_p", 1.5), ("top_p", 0.0), ("temperature", -0.1), ("max_tokens", 0),
                                         ("repeat_penalty", 3.0), ("top_k", 2.5)])
def test_out_of_range_values_fail_in_one_line(field, value):
    with pytest.raises(ConfigError) as info:
        DecodingParams(**{field: value})
    assert field in str(info.value) and "\n" not in str(info.value)


def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(ConfigError, match="temprature.*valid:.*temperature"):
        DecodingParams.from_dict({"temprature": 0.5})


def test_ints_are_coerced_and_stop_is_a_tuple():
    p = DecodingParams(temperature=1, stop=["</s>"])
    assert isinstance(p.temperature, float) and p.stop == ("</s>",)
    assert p.replace(seed=3).seed == 3 and DEFAULTS.seed == 42
    with pytest.raises(ConfigError):
        DecodingParams(stop="</s>")


def test_every_spec_field_is_a_dataclass_field():
    assert set(SPECS) <= set(DecodingParams.__dataclass_fields__)


def test_round_trips_through_ollama_and_openai_shapes():
    p = DecodingParams(temperature=0.3, top_p=0.7, max_tokens=33, seed=9, stop=("###",))
    assert DecodingParams.from_ollama_options(p.to_ollama_options()) == p
    assert DecodingParams.from_openai(p.to_openai()) == p.replace(num_ctx=DEFAULTS.num_ctx)
    assert DecodingParams.from_openai({"stop": "x", "max_completion_tokens": 5}).stop == ("x",)
    assert DecodingParams.from_ollama_options({"num_predict": -1}).max_tokens == DEFAULTS.max_tokens


def test_load_parameters_reads_a_mapping_or_a_parameters_key_on_top_of_a_base(tmp_path):
    from toolkit.params import load_parameters

    plain, nested, bad, broken = (tmp_path / n for n in ("plain.yaml", "nested.yaml", "bad.yaml", "broken.yaml"))
    plain.write_text("temperature: 0.3\ntop_k: 7\n")
    nested.write_text("# the sweep's best\nparameters: {temperature: 0.3, top_k: 7}\n")
    assert load_parameters(plain) == load_parameters(nested) == DEFAULTS.replace(temperature=0.3, top_k=7)
    base = DEFAULTS.replace(seed=5, max_tokens=64)
    assert load_parameters(nested, base=base) == base.replace(temperature=0.3, top_k=7)  # only the file's keys change
    bad.write_text("parameters: {temprature: 0.3}\n")
    broken.write_text("temperature: [0.3\n")
    for path, says in ((bad, "unknown decoding parameter 'temprature'"), (broken, "cannot read YAML")):
        with pytest.raises(ConfigError) as info:
            load_parameters(path)
        assert str(path) in str(info.value) and says in str(info.value) and "\n" not in str(info.value)
