"""Local stand-ins for the tiny Hub models and data sets that TRL's `tests/test_grpo_trainer.py` loads.

Nothing is downloaded. Models are random-init, built from their transformers config classes with the sizes of
TRL's own generator scripts (`scripts/generate_tiny_models/` in the TRL repository: hidden size 8, 4 heads, 2 KV
heads, 2 layers, intermediate 32; 16 for sequence classifiers), initialised like TRL's `init_weights_tiny_model` and
saved in float32 by default (upstream saves bfloat16; `--dtype bfloat16` does too, see `build_all`). They are written
in the Hugging Face Hub cache layout (`<hub_cache>/models--trl-internal-testing--<name>/snapshots/<rev>/`), so with
`HF_HUB_OFFLINE=1` and `HF_HUB_CACHE=<hub_cache>` every `from_pretrained("trl-internal-testing/...")` (config,
tokenizer, processor, generation config, remote code) resolves locally without any monkeypatching.

Tokenizers: a byte-level BPE vocabulary (about 900 merges trained on the zen prompts and the chat templates' fixed
text, so prompts are about as many tokens as with the real tokenizers; every id decodes), laid out like the real
ones where the tests depend on ids:

- Qwen2.5 / Qwen3 family: 151643 regular tokens, then Qwen's special tokens at their real ids
  (<|endoftext|> = 151643 = pad, <|im_start|> = 151644, <|im_end|> = 151645 = eos, <tool_call> = 151657, ...).
  Ids 0-255 are the GPT-2 byte alphabet (as in Qwen), and the few multi-character ids that the tool tests hard-code
  (4913 = '{"', 606 = 'name', 16370 = 'arguments', 17453 = 'Done', ...) decode to the text their comments show.
  The remaining ids are filler words of 2-6 letters (with or without a leading space), so a random model emits
  completions of varied length, as a real 151k vocabulary does.
- Llama 3.2: 128000 regular tokens + 256 special ones at the real ids (<|begin_of_text|> = 128000,
  <|finetune_right_pad_id|> = 128004, <|eot_id|> = 128009, ...).
- Gemma2: the regular tokens + <pad>, <eos>, <bos>, <unk>, <start_of_turn>, <end_of_turn> appended.
- Cohere2, GLM-4 MoE, GPT-OSS, Nemotron-H and the remote-code model reuse the Qwen2.5 tokenizer and chat template
  (the tests only train them on standard, non-chat prompts).

Chat templates are TRL's own copies of the real ones (`trl/chat_templates/*.jinja` of the installed TRL), so
`trl.chat_template_utils.add_response_schema` recognises them (tool-calling tests).

Data sets: `trl-internal-testing/zen`, configs `standard_prompt_only` and `conversational_prompt_only`, splits
train (17 rows) / test (2 rows), from the Zen of Python (the prompts the tests assert on are the real ones). Written
as parquet files under `<root>/datasets/trl-internal-testing/zen/<config>/<split>.parquet`; the pytest plugin
redirects `load_dataset` to them.

Not built (the tests that need them are skipped by the plugin, see `plugin.py`): vision-language models and their
image data sets (`zen-image`, `zen-multi-image`), and the Mistral model used only by GPU-only slow tests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import string
import subprocess
from pathlib import Path

ORG = "trl-internal-testing"
REVISION = "0" * 40  # fake commit hash of every stand-in snapshot
BUILD_VERSION = "3"  # bump to force a rebuild of the cache when this file changes

# Ids the tests hard-code in fake `generate` outputs (Qwen vocabulary), as byte-level strings (Ġ = space, Ċ = \n).
QWEN_FIXED_TOKENS = {
    293: "Ġb",
    314: "Ġ{",
    330: 'Ġ"',
    397: ">Ċ",
    411: "out",
    450: "de",
    497: '",',
    522: "</",
    606: "name",
    788: '":',
    894: "Ġany",
    927: "sh",
    944: "'t",
    1318: "text",
    1414: "Ġknow",
    1513: "Ġdon",
    2765: "Ġwon",
    4913: '{"',
    5212: 'Ġ{"',
    5392: "Ġtool",
    6023: "hi",
    6659: "call",
    7692: "async",
    9520: "step",
    11248: "}}Ċ",
    13477: "crement",
    14172: "tool",
    16252: "Ġincrement",
    16370: "arguments",
    17453: "Done",
    22785: "_tool",
    35744: "increment",
    64648: "multiply",
    93054: "_multiply",
    95642: '"}}Ċ',
}
# (content, special) in id order from 151643: Qwen2.5's added tokens, then Qwen3's extra ones.
QWEN_SPECIAL = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
QWEN3_EXTRA = [("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False)]

ZEN = [
    ("Beautiful is better than", " ugly.", "What is better than ugly?"),
    ("Explicit is", " better than implicit.", "What is better than implicit?"),
    ("Simple is better", " than complex.", "What is better than complex?"),
    ("Complex", " is better than complicated.", "What is better than complicated?"),
    ("Flat is better than", " nested.", "What is better than nested?"),
    ("Sparse is better", " than dense.", "What is better than dense?"),
    ("Readability", " counts.", "What counts?"),
    ("Special cases aren't special", " enough to break the rules.", "Are special cases enough to break the rules?"),
    ("Although practicality beats", " purity.", "What beats purity?"),
    ("Errors should never", " pass silently.", "What should never pass silently?"),
    ("Unless explicitly", " silenced.", "When can errors pass silently?"),
    ("In the face of ambiguity, refuse", " the temptation to guess.", "What should you do in the face of ambiguity?"),
    (
        "There should be one-- and preferably",
        " only one --obvious way to do it.",
        "How many ways should there be to do it?",
    ),
    (
        "Although that way may not be",
        " obvious at first unless you're Dutch.",
        "For whom may the way not be obvious at first?",
    ),
    ("Now is", " better than never.", "What is better than never?"),
    ("Although never is", " often better than *right* now.", "What is often better than right now?"),
    (
        "If the implementation is hard to explain,",
        " it's a bad idea.",
        "What does it mean if the implementation is hard to explain?",
    ),
    (
        "If the implementation is easy to explain,",
        " it may be a good idea.",
        "What does it mean if the implementation is easy to explain?",
    ),
    ("Namespaces are one honking great idea --", " let's do more of those!", "What are namespaces?"),
]
ZEN_TRAIN = 17


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map; its insertion order is the id order of Qwen's first 256 tokens."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _filler_words():
    letters = string.ascii_lowercase
    for length in itertools.count(2):
        for combo in itertools.product(letters, repeat=length):
            word = "".join(combo)
            yield "Ġ" + word
            yield word


def _corpus() -> list[str]:
    """Text the BPE merges are trained on: the zen prompts and the fixed text of the chat templates."""
    lines = [p + c for p, c, _ in ZEN] + [q for _, _, q in ZEN]
    lines += [
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        "system",
        "user",
        "assistant",
        "model",
        "Cutting Knowledge Date: December 2023",
        "Today Date: 26 Jul 2024",
        "You are a helpful assistant.",
        "# Tools",
        "You may call one or more functions to assist with the user query.",
        "You are provided with function signatures within <tools></tools> XML tags:",
        "For each function call, return a json object with function name and arguments within",
        '{"name": <function-name>, "arguments": <args-json-object>}',
        "The quick brown fox jumps over the lazy dog.",
    ]
    return lines * 4


def bpe_merges(vocab_size: int = 1200) -> tuple[list[str], list[tuple[str, str]]]:
    """Byte-level BPE merges (and the tokens they produce) trained on `_corpus()`, so that prompts take a number of
    tokens close to what a real tokenizer gives (the loss kernel of TRL scores every position on CPU, so prompt length
    drives the run time)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer)
    data = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["merges"]]
    merged = [a + b for a, b in merges]
    return merged, merges


def regular_vocab(size: int, fixed: dict[int, str], merged: list[str] = ()) -> dict[str, int]:
    """`size` regular tokens: the byte alphabet at ids 0-255, `fixed` at their ids, the BPE-merged tokens at the
    first free ids after 255, filler words elsewhere."""
    alphabet = list(bytes_to_unicode().values())
    tokens: list[str | None] = [None] * size
    tokens[: len(alphabet)] = alphabet
    for i, tok in fixed.items():
        if i < size:
            tokens[i] = tok
    used = {t for t in tokens if t is not None}
    free = (i for i in range(len(alphabet), size) if tokens[i] is None)
    for tok in merged:
        if tok not in used:
            tokens[next(free)] = tok
            used.add(tok)
    filler = (w for w in _filler_words() if w not in used)
    for i in range(size):
        if tokens[i] is None:
            tokens[i] = next(filler)
    assert len(set(tokens)) == size
    return {tok: i for i, tok in enumerate(tokens)}


def chat_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


def build_tokenizer(family: str):
    """A `Qwen2Tokenizer` (byte-level BPE, no merges) with the special-token layout of `family`."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    merged, merges = bpe_merges()
    if family in ("qwen2_5", "qwen3"):
        vocab = regular_vocab(151643, QWEN_FIXED_TOKENS, merged)
        specials = QWEN_SPECIAL + (QWEN3_EXTRA if family == "qwen3" else [])
        roles = dict(eos="<|im_end|>", pad="<|endoftext|>", bos=None, unk=None)
        template = chat_template("qwen2_5" if family == "qwen2_5" else "qwen3")
    elif family == "llama3_2":
        vocab = regular_vocab(128000, QWEN_FIXED_TOKENS, merged)
        names = {
            0: "<|begin_of_text|>",
            1: "<|end_of_text|>",
            4: "<|finetune_right_pad_id|>",
            6: "<|start_header_id|>",
            7: "<|end_header_id|>",
            8: "<|eom_id|>",
            9: "<|eot_id|>",
            10: "<|python_tag|>",
        }
        specials, reserved = [], 2
        for k in range(256):
            if k in names:
                specials.append((names[k], True))
            else:
                specials.append((f"<|reserved_special_token_{reserved}|>", True))
                reserved += 1
        roles = dict(eos="<|eot_id|>", pad=None, bos="<|begin_of_text|>", unk=None)
        template = chat_template("llama3_2")
    elif family == "gemma":
        vocab = regular_vocab(151643, QWEN_FIXED_TOKENS, merged)
        specials = [
            ("<pad>", True),
            ("<eos>", True),
            ("<bos>", True),
            ("<unk>", True),
            ("<start_of_turn>", True),
            ("<end_of_turn>", True),
        ]
        roles = dict(eos="<eos>", pad="<pad>", bos="<bos>", unk="<unk>")
        template = chat_template("gemma")
    else:
        raise ValueError(family)

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )
    start = len(vocab)
    tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in specials])
    for offset, (tok, _) in enumerate(specials):
        assert tokenizer.convert_tokens_to_ids(tok) == start + offset, (tok, tokenizer.convert_tokens_to_ids(tok))
    tokenizer.add_special_tokens({k + "_token": v for k, v in roles.items() if v is not None})
    tokenizer.chat_template = template
    return tokenizer


def init_weights_tiny_model(model):
    """TRL's `init_weights_tiny_model`: Xavier-uniform linears (zero bias), N(0, 0.02) embeddings, unit LayerNorms."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Linear):
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            nn.init.xavier_uniform_(module.weight)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d):
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            nn.init.xavier_uniform_(module.weight)


SMALL = dict(hidden_size=8, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=32)
SMALL_CLS = dict(SMALL, hidden_size=16, num_labels=1)


def _ids(tok, *names):
    return [tok.convert_tokens_to_ids(n) for n in names]


def model_specs(tokenizers):
    """name -> (family, builder(tokenizer) -> (model, generation_config kwargs))."""
    import transformers as tf

    def qwen_ids(tok):
        return dict(bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)

    def qwen_gen(tok):
        return dict(
            bos_token_id=tok.pad_token_id,
            pad_token_id=tok.pad_token_id,
            eos_token_id=[tok.eos_token_id, tok.pad_token_id],
        )

    def qwen3_ids(tok):
        return dict(bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)

    def llama_ids(tok):
        return dict(
            bos_token_id=tok.bos_token_id, eos_token_id=_ids(tok, "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
        )

    specs = {
        "tiny-Qwen2ForCausalLM-2.5": (
            "qwen2_5",
            lambda t: (tf.Qwen2ForCausalLM(tf.Qwen2Config(vocab_size=len(t), **SMALL, **qwen_ids(t))), qwen_gen(t)),
        ),
        "tiny-Qwen2ForSequenceClassification-2.5": (
            "qwen2_5",
            lambda t: (
                tf.Qwen2ForSequenceClassification(tf.Qwen2Config(vocab_size=len(t), **SMALL_CLS, **qwen_ids(t))),
                qwen_gen(t),
            ),
        ),
        "tiny-Qwen3ForCausalLM": (
            "qwen3",
            lambda t: (tf.Qwen3ForCausalLM(tf.Qwen3Config(vocab_size=len(t), **SMALL, **qwen3_ids(t))), qwen3_ids(t)),
        ),
        "tiny-Qwen3ForSequenceClassification": (
            "qwen3",
            lambda t: (
                tf.Qwen3ForSequenceClassification(tf.Qwen3Config(vocab_size=len(t), **SMALL_CLS, **qwen3_ids(t))),
                qwen3_ids(t),
            ),
        ),
        "tiny-Qwen3MoeForCausalLM": (
            "qwen3",
            lambda t: (
                tf.Qwen3MoeForCausalLM(
                    tf.Qwen3MoeConfig(
                        vocab_size=len(t),
                        **SMALL,
                        num_experts=4,
                        num_experts_per_tok=2,
                        norm_topk_prob=True,
                        head_dim=128,
                        **qwen3_ids(t),
                    )
                ),
                qwen3_ids(t),
            ),
        ),
        "tiny-LlamaForCausalLM-3.2": (
            "llama3_2",
            lambda t: (tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=len(t), **SMALL, **llama_ids(t))), llama_ids(t)),
        ),
        "tiny-LlamaForSequenceClassification-3.2": (
            "llama3_2",
            lambda t: (
                tf.LlamaForSequenceClassification(tf.LlamaConfig(vocab_size=len(t), **SMALL_CLS, **llama_ids(t))),
                llama_ids(t),
            ),
        ),
        "tiny-Gemma2ForCausalLM": (
            "gemma",
            lambda t: (
                tf.Gemma2ForCausalLM(
                    tf.Gemma2Config(
                        vocab_size=len(t),
                        **SMALL,
                        bos_token_id=t.bos_token_id,
                        eos_token_id=t.eos_token_id,
                        pad_token_id=t.pad_token_id,
                    )
                ),
                dict(
                    bos_token_id=t.bos_token_id,
                    pad_token_id=t.pad_token_id,
                    eos_token_id=[t.eos_token_id, t.convert_tokens_to_ids("<end_of_turn>")],
                ),
            ),
        ),
        "tiny-Cohere2ForCausalLM": (
            "qwen2_5",
            lambda t: (
                tf.Cohere2ForCausalLM(
                    tf.Cohere2Config(vocab_size=len(t), **SMALL, logit_scale=1.0, use_qk_norm=False, **qwen_ids(t))
                ),
                qwen_gen(t),
            ),
        ),
        "tiny-Glm4MoeForCausalLM": (
            "qwen2_5",
            lambda t: (
                tf.Glm4MoeForCausalLM(
                    tf.Glm4MoeConfig(
                        vocab_size=len(t),
                        **SMALL,
                        moe_intermediate_size=32,
                        head_dim=2,
                        n_routed_experts=4,
                        num_experts_per_tok=2,
                        attention_bias=True,
                        routed_scaling_factor=2.5,
                        use_qk_norm=True,
                        num_nextn_predict_layers=1,
                        **qwen_ids(t),
                    )
                ),
                qwen_gen(t),
            ),
        ),
        "tiny-GptOssForCausalLM": (
            "qwen2_5",
            lambda t: (
                tf.GptOssForCausalLM(
                    tf.GptOssConfig(
                        vocab_size=len(t), **SMALL, num_local_experts=4, num_experts_per_tok=2, **qwen_ids(t)
                    )
                ),
                qwen_gen(t),
            ),
        ),
        "tiny-NemotronHForCausalLM-nano": (
            "qwen2_5",
            lambda t: (
                tf.NemotronHForCausalLM(
                    tf.NemotronHConfig(
                        vocab_size=len(t),
                        hidden_size=16,
                        num_attention_heads=4,
                        num_key_value_heads=2,
                        intermediate_size=32,
                        layers_block_type=["mamba", "attention", "moe"],
                        mamba_num_heads=8,
                        mamba_head_dim=4,
                        mamba_n_groups=1,
                        ssm_state_size=16,
                        mamba_d_conv=4,
                        mamba_expand=2,
                        n_routed_experts=4,
                        num_experts_per_tok=2,
                        moe_intermediate_size=32,
                        moe_shared_expert_intermediate_size=32,
                        use_mamba_kernels=False,
                        **qwen_ids(t),
                    )
                ),
                qwen_gen(t),
            ),
        ),
    }
    return specs


def _snapshot_dir(hub_cache: Path, name: str) -> Path:
    repo = hub_cache / f"models--{ORG}--{name}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    snap = repo / "snapshots" / REVISION
    if snap.exists():
        shutil.rmtree(snap)
    snap.mkdir(parents=True)
    return snap


DTYPE = "float32"  # set by build_all; upstream saves bfloat16


def _save(model, tokenizer, gen_kwargs, snap: Path):
    import torch
    from transformers import GenerationConfig

    init_weights_tiny_model(model)
    model = model.to(dtype=getattr(torch, DTYPE))
    model.save_pretrained(snap)
    tokenizer.save_pretrained(snap)
    GenerationConfig(**{k: v for k, v in gen_kwargs.items() if v is not None}).save_pretrained(snap)


def build_remote_model(hub_cache: Path, tokenizer, trl_source: TrlSource):
    """tiny-RemoteForCausalLM: TRL's `_remote_code` (a LlamaForCausalLM subclass, model_type 'remote')."""
    import sys
    import tempfile

    snap = _snapshot_dir(hub_cache, "tiny-RemoteForCausalLM")
    code_dir = Path(tempfile.mkdtemp(prefix="remote_code_"))
    pkg = code_dir / "remote_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    base = "scripts/generate_tiny_models/for_causal_lm/_remote_code"
    for fname in ("configuration_remote.py", "modeling_remote.py"):
        (pkg / fname).write_text(trl_source.read(f"{base}/{fname}"))
    sys.path.insert(0, str(code_dir))
    try:
        from remote_pkg.configuration_remote import RemoteConfig
        from remote_pkg.modeling_remote import RemoteForCausalLM, RemoteForSequenceClassification, RemoteModel

        RemoteConfig.register_for_auto_class()
        RemoteModel.register_for_auto_class("AutoModel")
        RemoteForCausalLM.register_for_auto_class("AutoModelForCausalLM")
        RemoteForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
        config = RemoteConfig(
            vocab_size=len(tokenizer),
            **SMALL,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
        )
        config.auto_map = {
            "AutoModel": "modeling_remote.RemoteModel",
            "AutoModelForSequenceClassification": "modeling_remote.RemoteForSequenceClassification",
        }
        model = RemoteForCausalLM(config)
        _save(model, tokenizer, dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id), snap)
    finally:
        sys.path.remove(str(code_dir))
    # save_pretrained copies the module files of a registered custom class next to the weights.
    for fname in ("configuration_remote.py", "modeling_remote.py"):
        if not (snap / fname).exists():
            shutil.copy(pkg / fname, snap / fname)
    cfg = json.loads((snap / "config.json").read_text())
    assert cfg.get("model_type") == "remote" and "auto_map" in cfg, cfg


def build_zen(dataset_root: Path):
    from datasets import Dataset

    for config in ("standard_prompt_only", "conversational_prompt_only"):
        out = dataset_root / ORG / "zen" / config
        out.mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", ZEN[:ZEN_TRAIN]), ("test", ZEN[ZEN_TRAIN:])):
            if config == "standard_prompt_only":
                data = {"prompt": [p for p, _, _ in rows]}
            else:
                data = {"prompt": [[{"role": "user", "content": q}] for _, _, q in rows]}
            Dataset.from_dict(data).to_parquet(str(out / f"{split}.parquet"))


class TrlSource:
    """Reads files of TRL's repository from a bare mirror (at a commit) or from a checkout."""

    def __init__(self, path: str, commit: str | None = None):
        self.path = Path(path)
        self.bare = not (self.path / "tests").is_dir()
        self.commit = commit or "HEAD"
        if self.bare:
            self.commit = self._git("rev-parse", self.commit).strip()
        elif (self.path / ".git").exists():
            self.commit = (
                subprocess.run(
                    ["git", "-C", str(self.path), "rev-parse", "HEAD"], capture_output=True, text=True
                ).stdout.strip()
                or "working tree"
            )
        else:
            self.commit = "working tree"

    def _git(self, *args) -> str:
        return subprocess.run(
            ["git", "--git-dir", str(self.path), *args], check=True, capture_output=True, text=True
        ).stdout

    def read(self, rel: str) -> str:
        if self.bare:
            return self._git("show", f"{self.commit}:{rel}")
        return (self.path / rel).read_text()

    def exists(self, rel: str) -> bool:
        if self.bare:
            return (
                subprocess.run(
                    ["git", "--git-dir", str(self.path), "cat-file", "-e", f"{self.commit}:{rel}"], capture_output=True
                ).returncode
                == 0
            )
        return (self.path / rel).exists()


def build_all(cache_root: Path, trl_source: TrlSource, force: bool = False, dtype: str = "float32") -> dict:
    """Builds (or reuses) every stand-in under `cache_root`; returns the paths to export.

    `dtype`: dtype of the saved weights. Upstream's tiny models are bfloat16; float32 is the default here because on a
    shared 2-core CPU bfloat16 roughly doubles the time of TRL's chunked log-prob kernel (casts of every vocabulary
    tile). Tests that load with `dtype="float32"` are unaffected either way."""
    global DTYPE
    DTYPE = dtype
    hub_cache = cache_root / "hub"
    dataset_root = cache_root / "datasets"
    stamp = cache_root / "BUILD_OK"
    if stamp.exists() and stamp.read_text() == f"{BUILD_VERSION} {dtype}" and not force:
        return {"hub_cache": hub_cache, "dataset_root": dataset_root}
    if cache_root.exists():
        shutil.rmtree(cache_root)
    hub_cache.mkdir(parents=True)
    import torch

    torch.manual_seed(0)
    tokenizers = {f: build_tokenizer(f) for f in ("qwen2_5", "qwen3", "llama3_2", "gemma")}
    for name, (family, builder) in model_specs(tokenizers).items():
        tok = tokenizers[family]
        model, gen_kwargs = builder(tok)
        _save(model, tok, gen_kwargs, _snapshot_dir(hub_cache, name))
        print(f"[stand-ins] built {ORG}/{name} ({family} tokenizer, vocab {len(tok)})", flush=True)
    build_remote_model(hub_cache, tokenizers["qwen2_5"], trl_source)
    print(f"[stand-ins] built {ORG}/tiny-RemoteForCausalLM (remote code from TRL {trl_source.commit[:9]})", flush=True)
    build_zen(dataset_root)
    print(f"[stand-ins] built {ORG}/zen (standard_prompt_only, conversational_prompt_only)", flush=True)
    stamp.write_text(f"{BUILD_VERSION} {dtype}")
    return {"hub_cache": hub_cache, "dataset_root": dataset_root}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trl", help="bare mirror (git dir) or checkout of huggingface/trl")
    parser.add_argument("--commit", default=None)
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/trl_soup_grpo_parity/standins"))
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = parser.parse_args()
    print(build_all(Path(a.cache), TrlSource(a.trl, a.commit), force=a.force, dtype=a.dtype))
