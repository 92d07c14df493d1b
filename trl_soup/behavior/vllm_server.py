"""The "vllm_server" behavior backend: the frozen historical copy served by a vLLM server of its own.

The learner pushes its weights to the server every T generation batches (``behavior_refresh_method``):

- ``"disk"``: the learner's weights (merged with the adapter under PEFT) are written as safetensors next to the
  model config, the server reloads them (``POST /collective_rpc`` ``reload_weights``) and resets its prefix cache.
  Works on CPU. Only the main process writes; every rank waits for the refresh.
- ``"lora"`` (PEFT only): the trained adapter is saved and loaded on the server under a new name
  (``/v1/load_lora_adapter``); requests then name that adapter. The previous one is unloaded.
- ``"nccl"`` (GPU): TRL's weight-transfer client (``trl.generation.vllm_client.VLLMClient``) on its own group port.

Between refreshes the server is never written to, so it is frozen. Sampling sends one request per prompt row, with a
seed derived from the run seed, the generation batch and the row.

The behavior log-probs of the prefix (and the top-k log-probs behind the entropy estimate of
:func:`trl_soup.core.entropy_from_top_logprobs`) are those of the distribution TRL evaluates pi_theta on,
``log_softmax(logits / temperature)``: no top-p, top-k, min-p or repetition penalty (docs/deviations.md, "The prefix
denominator"). How they are read depends on the sampling settings (:func:`sampling_filters`):

- no filter active: the sampling request's own log-probs (``--logprobs-mode processed_logprobs``: after temperature,
  and nothing else is applied), at any temperature;
- a filter active and ``temperature == 1``: the sampled log-probs are renormalised over the kept tokens, so each
  response is re-scored by a second request on ``prompt + response`` with ``prompt_logprobs`` (vLLM computes them
  from the raw logits, i.e. at temperature 1, without penalties or filters);
- a filter active and ``temperature != 1``: vLLM offers neither (prompt log-probs ignore the temperature), so
  :func:`check_sampling_settings` refuses it.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import torch
from accelerate.utils import is_peft_model

from ..core import entropy_from_top_logprobs
from ..server_auth import client_token
from ..validation import check_lora_needs_peft, check_nccl_needs_cuda, check_sampling_settings, sampling_filters
from .base import BehaviorBackend, BehaviorSamples, padded_rows, samples_from_token_rows
from .context import BehaviorContext
from .local import gathered
from .server_client import BehaviorServerClient, BehaviorServerError, trl_vllm_client

WEIGHTS_FILE = "model.safetensors"
LORA_PREFIX = "soup-behavior"
_CONCURRENCY = 16


def server_state_dict(model) -> dict[str, torch.Tensor]:
    """The learner's weights under the names of a plain model: merged LoRA under PEFT, CPU tensors, no shared storage.

    Under PEFT the adapter is merged into the base weights for the copy and unmerged right after (as TRL does to sync
    vLLM); adapter tensors and PEFT's name parts (``base_model.model.``, ``.base_layer``, ``modules_to_save``) go.
    """
    if not is_peft_model(model):
        return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
    model.merge_adapter()
    try:
        adapter = model.active_adapter
        state = {}
        for name, tensor in model.state_dict().items():
            if "lora_" in name or ".original_module." in name:
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            name = name.replace(f".modules_to_save.{adapter}", "")
            if ".modules_to_save." in name:  # another adapter's copy
                continue
            state[name] = tensor.detach().to("cpu", copy=True)
    finally:
        model.unmerge_adapter()
    return state


def save_for_server(model, directory: str) -> str:
    """Write ``model``'s weights (see :func:`server_state_dict`) and config where a vLLM server can reload them.

    ``lm_head.weight`` is always written, a copy of the input embedding for a model that ties them: on a CPU server,
    ``reload_weights`` re-packs only the layers that receive a tensor, so a tied head without its own tensor keeps
    its old weights (docs/vllm_cpu_notes.md, "Tied embeddings").
    """
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    base = model.get_base_model() if is_peft_model(model) else model
    state = server_state_dict(model)
    if "lm_head.weight" not in state:
        embed_name = next(name for name in state if name.endswith("embed_tokens.weight"))
        state["lm_head.weight"] = state[embed_name].clone()
    save_file(state, os.path.join(directory, WEIGHTS_FILE), metadata={"format": "pt"})
    base.config.to_json_file(os.path.join(directory, "config.json"))
    return directory


def _server_auth(args) -> dict:
    """What authenticates the clients of a server: the token (``behavior_server_token``, else
    ``TRL_SOUP_SERVER_TOKEN``; kept in the clients' request headers only) and the CA file for ``https://``."""
    return {"token": client_token(args.behavior_server_token), "ca_file": args.behavior_server_ca_file}


# The config.json keys that must match between the served model and the learner (a refreshable behavior server).
ARCHITECTURE_KEYS = (
    "architectures",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
)


class VLLMServerBehaviorBackend(BehaviorBackend):
    """The behavior copy on a vLLM server, refreshed by disk reload, LoRA loading or NCCL.

    ``member``: the slot of this copy in a behavior pool (:class:`trl_soup.behavior.pool.BehaviorPool`, LoRA refresh
    only): each member is a LoRA adapter of its own on the same server, named ``soup-behavior-m<member>-<refresh>``
    (``soup-behavior-<refresh>`` for member 0), with a refresh folder of its own.
    """

    role = "behavior"  # in messages
    refreshable = True  # False: a server whose weights SOUP never writes (the "teacher" prefix source)

    def __init__(self, context: BehaviorContext, member: int = 0, base_url: str | None = None):
        self.context = context
        self.lora_prefix = LORA_PREFIX if member == 0 else f"{LORA_PREFIX}-m{member}"
        args = context.args
        check_sampling_settings(args)  # also refused by SOUPConfig; kept here for configs built without it
        # With a filter active (then temperature == 1), the sampled log-probs are renormalised over the kept tokens:
        # every response is re-scored with prompt log-probs (see the module docstring).
        self.rescore = bool(sampling_filters(args))
        self.base_url = base_url or args.behavior_server_url
        self.method = args.behavior_refresh_method if self.refreshable else None
        learner = context.learner()
        self.is_peft = is_peft_model(learner)
        check_lora_needs_peft(self.method, self.is_peft)
        check_nccl_needs_cuda(self.method, getattr(args, "use_cpu", False))
        self.client = BehaviorServerClient(self.base_url, args.behavior_server_max_retries, **_server_auth(args))
        self.client.wait_until_healthy(args.behavior_server_timeout)
        models = self.client.models()
        self.served_model = models[0]["id"]
        self.model_name = self.served_model  # what requests name: the base model, or the current LoRA adapter
        self.max_model_len = models[0].get("max_model_len")
        self._check_same_model(learner, models[0])
        self.refresh_dir = os.path.abspath(
            args.behavior_refresh_dir or os.path.join(args.output_dir, "behavior_refresh")
        )
        if member:
            self.refresh_dir = os.path.join(self.refresh_dir, f"member-{member}")
        self.refresh_count = 0
        self.vocab_size = (learner.get_base_model() if self.is_peft else learner).config.get_text_config().vocab_size
        self._nccl = None
        if self.method == "nccl" and context.accelerator.is_main_process:
            self._nccl = trl_vllm_client(  # needs vLLM installed in the training environment
                self.base_url,
                **_server_auth(args),
                group_port=args.behavior_server_group_port,
                connection_timeout=args.behavior_server_timeout,
            )
            self._nccl.init_communicator(device=torch.cuda.current_device())

    # ------------------------------------------------------------------------------------------------ checks
    def _check_same_model(self, learner, served: dict) -> None:
        """Refuse a server that serves another vocabulary or architecture than the learner, or runs with settings
        SOUP's log-probs and budgets cannot work with."""
        self._check_same_tokenizer()
        root = served.get("root") or self.served_model
        config_path = os.path.join(root, "config.json")
        if self.refreshable and os.path.isfile(config_path):  # a teacher may be another model (same tokenizer)
            self._check_same_architecture((learner.get_base_model() if self.is_peft else learner).config, config_path)
        self._check_server_settings()

    def _check_same_tokenizer(self) -> None:
        probe = "SOUP probe: 0123456789 +-*/= abc xyz"
        expected = self.context.tokenizer(probe, add_special_tokens=False)["input_ids"]
        got = self.client.tokenize(self.served_model, probe)
        if got != expected:
            fix = "Start the server from the learner's model." if self.refreshable else "Serve a teacher that uses "
            fix += "" if self.refreshable else "the learner's tokenizer (its prefixes are token ids of the learner's)."
            raise ValueError(
                f"The {self.role} server at {self.base_url} serves {self.served_model!r}, whose tokenizer differs "
                f"from the learner's (probe {probe!r}: server {got[:12]}..., learner {expected[:12]}...). {fix}"
            )

    def _check_same_architecture(self, config, config_path: str) -> None:
        with open(config_path) as f:
            server_config = json.load(f)
        ours = config.to_dict()
        for key in ARCHITECTURE_KEYS:
            theirs, mine = server_config.get(key), ours.get(key)
            if theirs is not None and mine is not None and theirs != mine:
                raise ValueError(
                    f"The behavior server at {self.base_url} serves {self.served_model!r} with {key}="
                    f"{theirs!r}, the learner has {key}={mine!r}: a different model. Start the "
                    "server from the learner's model."
                )

    def _check_server_settings(self) -> None:
        """Log-probs after temperature scaling, enough of them for the entropy estimate, room for a full response."""
        args, max_completion_length = self.context.args, self.context.sampling.max_completion_length
        info = self.client.request("GET", "/server_info?config_format=json")
        model_config = (info.get("vllm_config") or {}).get("model_config") or {}
        mode = model_config.get("logprobs_mode")
        if mode is not None and mode != "processed_logprobs":
            raise ValueError(
                f"The {self.role} server at {self.base_url} runs with --logprobs-mode {mode}: its sampling log-probs "
                "are then not log_softmax(logits / temperature), the prefix denominator. Restart it with "
                "--logprobs-mode processed_logprobs (python -m trl_soup.serve_behavior does)."
            )
        max_logprobs = model_config.get("max_logprobs")
        if max_logprobs is not None and 0 <= max_logprobs < args.prefix_entropy_logprobs:
            raise ValueError(
                f"prefix_entropy_logprobs={args.prefix_entropy_logprobs} is more than the behavior server at "
                f"{self.base_url} allows (--max-logprobs {max_logprobs}). Allowed values: 1..{max_logprobs}."
            )
        if self.max_model_len is not None and self.max_model_len < max_completion_length + 1:
            raise ValueError(
                f"The {self.role} server at {self.base_url} has max_model_len={self.max_model_len}, too short for "
                f"max_completion_length={max_completion_length} plus the prompt. Restart it with a larger "
                "--max-model-len."
            )

    # ------------------------------------------------------------------------------------------------ refresh
    def refresh(self) -> None:
        context = self.context
        learner = context.learner()
        self.refresh_count += 1
        # Under ZeRO-3 every rank takes part in gathering the full weights (a collective; the whole model is held on
        # each rank for the duration, as in TRL's vLLM weight sync under PEFT); only the main process writes them.
        with gathered(list(learner.parameters()), context.zero3):
            if context.accelerator.is_main_process:
                self._push(learner)
        if self.method == "lora":
            self.model_name = f"{self.lora_prefix}-{self.refresh_count}"
        context.accelerator.wait_for_everyone()

    def _push(self, learner) -> None:
        """Main process: write the learner's (gathered) weights and make the server load them."""
        target = os.path.join(self.refresh_dir, f"refresh-{self.refresh_count}")
        if self.method == "lora":
            learner.save_pretrained(target, selected_adapters=[learner.active_adapter])
            self._load_adapter(self._adapter_path(target))
        else:
            save_for_server(learner, target)  # also kept for mid-window checkpoints with "nccl"
            if self.method == "disk":
                self._reload(target)
            else:
                state = server_state_dict(learner)
                metadata = [(k, str(v.dtype).removeprefix("torch."), list(v.shape)) for k, v in state.items()]
                self._nccl.update_named_params(metadata, ((k, v.cuda()) for k, v in state.items()))
            self.client.reset_prefix_cache()
        previous = os.path.join(self.refresh_dir, f"refresh-{self.refresh_count - 1}")
        if os.path.isdir(previous):
            shutil.rmtree(previous)

    def _reload(self, directory: str) -> None:
        """Reload the server's weights from ``directory``. A failed reload leaves a vLLM server unusable (its layers
        are already torn down), so it is never retried on the same server."""
        if not os.path.isfile(os.path.join(directory, WEIGHTS_FILE)):
            raise FileNotFoundError(f"No {WEIGHTS_FILE} in {directory}: refusing to ask the server to reload it.")
        try:
            self.client.reload_weights(directory)
        except BehaviorServerError as error:
            raise BehaviorServerError(
                f"The behavior server at {self.base_url} failed to reload {directory}; a vLLM server does not recover "
                f"from that. Restart it and resume from the last checkpoint. ({error})"
            ) from None

    def _load_adapter(self, path: str) -> None:
        name = f"{self.lora_prefix}-{self.refresh_count}"
        self.client.load_lora_adapter(name, path)
        if self.model_name != self.served_model:
            try:
                self.client.unload_lora_adapter(self.model_name)
            except BehaviorServerError:
                pass  # already gone (e.g. the server restarted): nothing to free

    def _adapter_path(self, directory: str) -> str:
        """PEFT writes the "default" adapter at the top of the directory and any other under a sub-folder."""
        adapter = self.context.learner().active_adapter
        return directory if adapter == "default" else os.path.join(directory, adapter)

    def _current_dir(self) -> str:
        return os.path.join(self.refresh_dir, f"refresh-{self.refresh_count}")

    def save_snapshot(self, directory: str) -> None:
        if not self.context.args.should_save:  # called on every rank; the files are copied once
            return
        shutil.copytree(self._current_dir(), directory, dirs_exist_ok=True)
        with open(os.path.join(directory, "soup_server_snapshot.json"), "w") as f:
            json.dump({"refresh_count": self.refresh_count, "method": self.method}, f)

    def load_snapshot(self, directory: str) -> None:
        with open(os.path.join(directory, "soup_server_snapshot.json")) as f:
            saved = json.load(f)
        if saved["method"] != self.method:
            raise ValueError(
                f"The checkpoint's behavior snapshot was refreshed with behavior_refresh_method={saved['method']!r}, "
                f"this run uses {self.method!r}; resume with the same value."
            )
        self.refresh_count = saved["refresh_count"]
        accelerator = self.context.accelerator
        if accelerator.is_main_process:
            target = self._current_dir()
            shutil.copytree(directory, target, dirs_exist_ok=True)
            if self.method == "lora":
                self._load_adapter(self._adapter_path(target))
            elif self.method == "disk":
                self._reload(target)
                self.client.reset_prefix_cache()
            else:
                from safetensors.torch import load_file

                state = load_file(os.path.join(target, WEIGHTS_FILE))
                metadata = [(k, str(v.dtype).removeprefix("torch."), list(v.shape)) for k, v in state.items()]
                self._nccl.update_named_params(metadata, ((k, v.cuda()) for k, v in state.items()))
                self.client.reset_prefix_cache()
        if self.method == "lora":
            self.model_name = f"{self.lora_prefix}-{self.refresh_count}"
        accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------------------ sampling
    def _row_seeds(self, count: int, generation_batch_index: int, stream: int = 0) -> list[int]:
        """One seed per row, a function of (run seed, generation batch, rank, stream, row) only: a prefetched request
        and a synchronous one for the same batch sample the same responses."""
        generator = self.context.sampling_generator(generation_batch_index, stream)
        return torch.randint(0, 2**31 - 1, (count,), generator=generator).tolist()

    def sample(
        self,
        prompt_ids: list[list[int]],
        max_new_tokens: int,
        generation_batch_index: int,
        stream: int = 0,
        rows: list[dict] | None = None,
    ) -> BehaviorSamples:
        """Thread-safe (HTTP only, no trainer state is written): the prefetcher calls it from a background thread.

        Without sampling filters one request per row gives the tokens and their log-probs. With filters (temperature
        1, :func:`check_sampling_settings`) the row's response is then re-scored by a second request on
        ``prompt + response`` whose prompt log-probs are the unfiltered, unpenalised softmax of the behavior weights.
        """
        top_k = self.context.args.prefix_entropy_logprobs
        base = self._sampling_payload(max_new_tokens, top_k)
        seeds = self._row_seeds(len(prompt_ids), generation_batch_index, stream)
        send = lambda row: self._sample_row(list(prompt_ids[row]), {**base, "seed": seeds[row]}, top_k)  # noqa: E731
        with ThreadPoolExecutor(max_workers=min(_CONCURRENCY, max(1, len(prompt_ids)))) as pool:
            responses = list(pool.map(send, range(len(prompt_ids))))
        return self._samples_from_rows(responses, top_k)

    def _sampling_payload(self, max_new_tokens: int, top_k: int) -> dict:
        """The completion request's fields shared by every row: the learner's sampling settings, token ids in and
        out, top-k log-probs (unless responses are re-scored)."""
        sampling = self.context.sampling
        return {
            "model": self.model_name,
            "max_tokens": max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k if sampling.top_k else -1,
            "min_p": sampling.min_p or 0.0,
            "repetition_penalty": sampling.repetition_penalty,
            "logprobs": None if self.rescore else top_k,
            "n": 1,
            "stop_token_ids": list(sampling.eos_token_ids),
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
        }

    def _sample_row(self, prompt: list[int], base: dict, top_k: int) -> tuple[list[int], list[float], list[dict]]:
        """One row's response: its token ids, log-probs and top-k log-probs (re-scored with sampling filters)."""
        payload = {**base, "prompt": prompt}
        if self.rescore and self.max_model_len is not None:
            # The re-scoring request needs one free position after prompt + response (vLLM refuses a prompt of
            # max_model_len tokens), so the response is capped one token below vLLM's own silent cap.
            payload["max_tokens"] = min(base["max_tokens"], self.max_model_len - 1 - len(prompt))
            if payload["max_tokens"] < 1:
                raise BehaviorServerError(
                    f"A prompt of {len(prompt)} tokens leaves no room for a response on the behavior server at "
                    f"{self.base_url} (max_model_len={self.max_model_len}). Restart it with a larger "
                    "--max-model-len."
                )
        choice = self.client.complete(payload)[0]
        ids = list(choice["token_ids"])
        if not self.rescore:
            return _row_from_choice(choice)
        if not ids:
            return ids, [], []
        return (ids, *self._score(prompt, ids, top_k))

    def _score(self, prompt: list[int], ids: list[int], top_k: int) -> tuple[list[float], list[dict]]:
        """log_softmax(logits) of the behavior weights at each response token, and the top-k there, from the prompt
        log-probs of ``prompt + ids`` (vLLM computes them from the raw logits: temperature 1, no penalty, no filter;
        vllm/v1/worker/gpu_model_runner.py ``_get_prompt_logprobs_dict``). Exact only at temperature 1, which
        :func:`check_sampling_settings` guarantees whenever this runs."""
        choice = self.client.complete(
            {
                "model": self.model_name,
                "prompt": prompt + ids,
                "max_tokens": 1,
                "temperature": 1.0,
                "top_k": -1,
                "prompt_logprobs": top_k,
                "skip_special_tokens": False,
            }
        )[0]
        entries = (choice.get("prompt_logprobs") or [])[len(prompt) :]
        if len(entries) != len(ids):
            raise BehaviorServerError(
                f"The behavior server at {self.base_url} returned {len(entries)} prompt log-probs for a response of "
                f"{len(ids)} tokens."
            )
        logps, tops = [], []
        for token, entry in zip(ids, entries, strict=True):
            entry = {int(key): value["logprob"] for key, value in entry.items()}
            logps.append(entry[token])  # the scored token is always in its entry
            tops.append(entry)
        return logps, tops

    def _samples_from_choices(self, choices: list[dict], top_k: int) -> BehaviorSamples:
        """BehaviorSamples from sampling answers that carry their own log-probs (the no-filter path)."""
        return self._samples_from_rows([_row_from_choice(choice) for choice in choices], top_k)

    def _samples_from_rows(self, rows: list[tuple[list[int], list[float], list[dict]]], top_k: int) -> BehaviorSamples:
        """Rows of (response ids, log-prob of each token, {token id: log-prob} with the top-k and the token itself)."""
        for ids, token_logps, _ in rows:
            if len(ids) != len(token_logps):
                raise BehaviorServerError(
                    f"The behavior server at {self.base_url} returned {len(ids)} token ids but "
                    f"{len(token_logps)} log-probs; start it with the flags of `python -m trl_soup.serve_behavior`."
                )
        logps, _ = padded_rows(
            [[float("nan") if lp is None else lp for lp in token_logps] for _, token_logps, _ in rows],
            0.0,
            torch.float32,
        )
        tops = [[_top_k_values(entry, top_k) for entry in entries] for _, _, entries in rows]
        top, _ = padded_rows(tops, float("-inf"), torch.float32, trailing=(top_k,))
        entropies, _ = entropy_from_top_logprobs(top, self.vocab_size)
        sampling = self.context.sampling
        ids = [ids for ids, _, _ in rows]
        return samples_from_token_rows(
            ids, logps, entropies, sampling.eos_token_ids, sampling.pad_token_id, self.context.device
        )


def _token_id(key) -> int:
    """A token key of vLLM's sampled log-probs: ``"token_id:123"`` (``return_tokens_as_token_ids``) or an id."""
    return int(str(key).rsplit(":", 1)[-1])


def _row_from_choice(choice: dict) -> tuple[list[int], list, list[dict]]:
    """(token ids, sampled log-probs, per position {token id: log-prob} of the top-k plus the sampled token, whose
    log-prob is always known) from one /v1/completions choice."""
    logprobs = choice["logprobs"]
    token_logps = list(logprobs["token_logprobs"])
    entries = []
    for token, lp, top in zip(logprobs["tokens"], token_logps, logprobs["top_logprobs"], strict=True):
        entries.append({**{_token_id(key): value for key, value in (top or {}).items()}, _token_id(token): lp})
    return list(choice["token_ids"]), token_logps, entries


def _top_k_values(entry: dict, top_k: int) -> list[float]:
    """The ``top_k`` largest log-probs of one position's ``{token: log-prob}``, padded with -inf."""
    values = sorted((v for v in entry.values() if v is not None), reverse=True)[:top_k]
    return values + [float("-inf")] * (top_k - len(values))
