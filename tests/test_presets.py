import pytest
import torch
from PIL import Image

from sparsecut_core.presets.build import build_from_preset
from sparsecut_core.inference.chat import Chat, Sampling
from sparsecut_core.inference.loading import load_pretrained
from sparsecut_core.presets.preset import available_presets, load_preset


def test_every_shipped_preset_loads_and_validates():
    assert {"tiny", "vicuna7b", "vicuna13b", "qwen2.5-3b", "phi3-mini"} <= set(available_presets())
    for name in available_presets():
        config = load_preset(name).sparsecut_config()
        assert config.shortcuts


def test_paper_defaults_are_in_the_real_presets():
    assert len(load_preset("vicuna7b").sparsecut_config().shortcuts) == 8
    assert [j for _, j in load_preset("vicuna13b").sparsecut_config().shortcuts][:3] == [1, 6, 11]  # stride 5
    qwen = load_preset("qwen2.5-3b")
    assert len(qwen.sparsecut_config().shortcuts) == 6
    assert qwen.llm.source == "Qwen/Qwen2.5-3B-Instruct" and qwen.template == "chat_template"
    assert load_preset("vicuna7b").train["pretrain"]["learning_rate"] == 1e-3


@pytest.mark.parametrize(
    "text, message",
    [
        ('name = "x"\n[vision]\nconfig = {model_type = "clip_vision_model"}\n[llm]\nconfig = {model_type = "llama"}\n',
         "missing `sparsecut`"),
        ('name = "x"\ncolour = 1\n', "unknown keys \\['colour'\\]"),
        ('name = "x"\n[vision]\nconfig = {hidden_size = 8}\n[llm]\nconfig = {model_type = "llama"}\n[sparsecut]\n',
         "vision.config: must be a table with a model_type"),
        ('name = "x"\n[vision]\nconfig = {model_type = "clip_vision_model", num_hidden_layers = 4}\n'
         '[llm]\nsource = "x"\nconfig = {model_type = "llama", num_hidden_layers = 4}\n[sparsecut]\npattern = [[9, 1]]\n',
         "ViT layer 9 is out of range"),
        ('name = "x" =', "not valid TOML"),
    ],
)
def test_bad_preset_files_name_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_preset(path)
    assert str(path) in str(err.value)


def test_unknown_preset_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown preset 'vicuna70b'.*tiny"):
        load_preset("vicuna70b")


def test_tiny_preset_builds_saves_and_answers(tmp_path):
    model, processor = build_from_preset(load_preset("tiny"))
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_pretrained(tmp_path)
    image = Image.new("RGB", (90, 60), (200, 30, 30))
    sampling = Sampling(max_new_tokens=5)
    a = Chat(model.eval(), processor, image).ask("what colour is the shape?", sampling)
    b = Chat(loaded, loaded_processor, image).ask("what colour is the shape?", sampling)
    assert a == b and len(a.split()) >= 1
    assert loaded_processor.template == "vicuna_v1" and loaded.config.hi_res


def test_tiny_preset_is_seeded():
    a, _ = build_from_preset(load_preset("tiny"), seed=3)
    b, _ = build_from_preset(load_preset("tiny"), seed=3)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_build_from_preset_with_local_folders(tmp_path):
    """A real-preset path: pretrained parts from folders, the LLM's own tokenizer gains <image>."""
    from transformers import CLIPImageProcessorPil, CLIPVisionModel, LlamaForCausalLM

    from conftest import tiny_text_config, tiny_vision_config
    from sparsecut_core.data.tokenizer import TINY_VOCAB, build_word_tokenizer

    tokenizer = build_word_tokenizer(TINY_VOCAB, image_token="<unused>")
    CLIPVisionModel(tiny_vision_config()).save_pretrained(tmp_path / "vision")
    CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(
        tmp_path / "vision")
    LlamaForCausalLM(tiny_text_config(vocab_size=len(tokenizer))).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    model, processor = build_from_preset(load_preset("vicuna7b"), vision=tmp_path / "vision", llm=tmp_path / "llm",
                                         num_shortcuts=2)
    assert processor.image_token_id == len(tokenizer) == model.config.image_token_id
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) + 1
    answer = Chat(model.eval(), processor, Image.new("RGB", (40, 30))).ask("what is it?", Sampling(max_new_tokens=3))
    assert isinstance(answer, str)


def test_shipped_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    from sparsecut_core.presets.preset import PRESET_DIR

    kinds = {path.stem: load_config_from_file(str(path)).distributed_type.value
             for path in sorted((PRESET_DIR / "accelerate").glob("*.yaml"))}
    # cpu2 is MULTI_GPU so that `accelerate launch` starts its two processes (its MULTI_CPU starts one); without
    # GPUs they run as gloo DDP on CPU (test_launch.py runs both ways of launching them)
    assert kinds == {"cpu2": "MULTI_GPU", "ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED",
                     "zero3": "DEEPSPEED"}


def test_every_preset_stage_makes_a_valid_train_config():
    from sparsecut_core.training.config import TrainConfig

    for name in available_presets():
        for stage, values in load_preset(name).train.items():
            settings = {k: v for k, v in values.items() if k not in ("data", "images")}
            TrainConfig.from_dict({**settings, "stage": stage, "output_dir": "x"})
