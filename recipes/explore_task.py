"""An exploration-sensitive toy task: walks of a fixed length between two nodes of a small graph.

Nothing here is downloaded. The copy task of `trl_soup.toy` has one right answer per prompt; this one has hundreds
of millions, of very unequal prior probability, so it can show what on-policy RL does to the *set* of answers a
policy finds (the paper's pass@k-at-large-k question), not only to its accuracy.

The task, "walk from a to b in exactly L steps"::

    prompt      "walk:c>f="                start node c, target node f
    completion  "hbk...f" <eos>            L = 20 nodes, each a successor of the one before (the first one of c),
                                           the last one f; then end-of-sequence (21 tokens)

The graph (`GRAPH`) is fixed: 12 nodes "a".."l", each with `OUT_DEGREE` = 3 successors drawn once with
`random.Random(GRAPH_SEED)`, strongly connected and aperiodic, so every (start, target) pair has walks of every
length >= 12 steps. For L = 20 the number of correct answers of a prompt is `count_walks(start, target)`, about
3^20 / 12 = 2.9e8. Correct answers are far from equally likely under the start policy: it is trained by SFT
(`warmup_sft`) on walks drawn from a skewed random walk whose successor weights are `EDGE_WEIGHTS` (0.7, 0.2, 0.1),
labelled with their own end node as target. It learns the edges (99.6% of its steps follow one) but not where a
walk must go to end at its target: its success rate, 8-10% at temperature 1, is what a walk that ignores the target
would get (1/12 on average), higher for the targets the skewed walk visits often. So it finds correct walks for most
prompts, but rarely, and mostly along the heavy edges. The binary `walk_reward` is the verifier; the study trains on
`shaped_walk_reward`, which adds partial credit for valid walks that end near the target.

Public API:

    GRAPH, NODES, WALK_LENGTH, EDGE_WEIGHTS       the fixed graph and task sizes
    count_walks(start, target, length)            -> int, the number of correct answers of a prompt (matrix power)
    parse_prompt(prompt)                          -> (start, target)
    is_correct_walk(completion, start, target)    -> bool, the verifier
    walk_reward(prompts, completions, **kwargs)   TRL reward function: 1.0 iff correct (binary, like math-verify)
    distance_to(target)                           -> {node: shortest distance to target}
    shaped_score / shaped_walk_reward             1.0 if correct, PARTIAL_CREDIT / d for a valid walk d edges short
    valid_edge_share(completion, start)           share of steps that follow an edge (a diagnostic)
    build_walk_dataset(num_prompts, seed, ...)    -> datasets.Dataset, columns "prompt", "start", "target"
                                                  (and "reference_completion" with references=True)
    sample_walk(start, length, rng)               a walk of the skewed prior
    uniform_correct_walk(start, target, rng)      a correct walk drawn uniformly from all of the prompt's answers
    warmup_sft(model, tokenizer, steps, seed)     supervised start policy, in place (toy.warmup_sft's loop)
    build_explore_policy(seed=0, ...)             -> (model, tokenizer): toy.build_tiny_model + warmup_sft

The tokenizer is `toy.build_tokenizer()` (character level: every node is one token).
"""

from __future__ import annotations

import random

import torch

from trl_soup import toy
from trl_soup.rewards import completion_text

__all__ = [
    "EDGE_WEIGHTS",
    "GRAPH",
    "GRAPH_SEED",
    "NODES",
    "OUT_DEGREE",
    "PARTIAL_CREDIT",
    "PROMPT_TEMPLATE",
    "SFT_STEPS",
    "WALK_LENGTH",
    "build_explore_policy",
    "build_walk_dataset",
    "count_walks",
    "distance_to",
    "is_correct_walk",
    "parse_prompt",
    "sample_walk",
    "shaped_score",
    "shaped_walk_reward",
    "uniform_correct_walk",
    "valid_edge_share",
    "walk_reward",
    "warmup_sft",
]

NODES = "abcdefghijkl"
OUT_DEGREE = 3
EDGE_WEIGHTS = (0.7, 0.2, 0.1)
"""Prior probability of each node's 1st, 2nd and 3rd successor in the SFT walks (the unequal prior)."""
WALK_LENGTH = 20
GRAPH_SEED = 0
PROMPT_TEMPLATE = "walk:{start}>{target}="
PARTIAL_CREDIT = 0.5
"""`shaped_score` of a valid walk that ends one edge short of the target (half that at two edges, ...)."""
SFT_STEPS = 300
"""Supervised steps of `build_explore_policy` (measured next to `warmup_sft`)."""


def _adjacency(graph: dict[str, tuple[str, ...]]) -> list[list[int]]:
    index = {node: i for i, node in enumerate(NODES)}
    matrix = [[0] * len(NODES) for _ in NODES]
    for node, successors in graph.items():
        for successor in successors:
            matrix[index[node]][index[successor]] = 1
    return matrix


def _matrix_power_counts(matrix: list[list[int]], length: int) -> list[list[int]]:
    """``A^length`` in exact integers (walk counts)."""
    size = len(matrix)
    result = [[int(i == j) for j in range(size)] for i in range(size)]
    for _ in range(length):
        result = [[sum(result[i][m] * matrix[m][j] for m in range(size)) for j in range(size)] for i in range(size)]
    return result


def _build_graph(seed: int) -> dict[str, tuple[str, ...]]:
    """Each node gets OUT_DEGREE distinct successors (no self loop); redrawn until every pair has 20-step walks."""
    rng = random.Random(seed)
    while True:
        graph = {node: tuple(rng.sample([m for m in NODES if m != node], OUT_DEGREE)) for node in NODES}
        counts = _matrix_power_counts(_adjacency(graph), 12)  # all positive: strongly connected and aperiodic
        if all(c > 0 for row in counts for c in row):
            return graph


GRAPH: dict[str, tuple[str, ...]] = _build_graph(GRAPH_SEED)
"""node -> its successors, in prior order (the first gets EDGE_WEIGHTS[0] in the SFT walks)."""

_WALK_COUNTS: dict[int, list[list[int]]] = {}


def count_walks(start: str, target: str, length: int = WALK_LENGTH) -> int:
    """The number of walks of `length` steps from `start` to `target`: the correct answers of that prompt."""
    if length not in _WALK_COUNTS:
        _WALK_COUNTS[length] = _matrix_power_counts(_adjacency(GRAPH), length)
    return _WALK_COUNTS[length][NODES.index(start)][NODES.index(target)]


def parse_prompt(prompt: str) -> tuple[str, str]:
    """``"walk:c>f="`` -> ``("c", "f")``."""
    body = prompt.removeprefix("walk:").removesuffix("=")
    start, _, target = body.partition(">")
    return start, target


def is_correct_walk(completion: str, start: str, target: str, length: int = WALK_LENGTH) -> bool:
    """The verifier: exactly `length` nodes, each a successor of the previous one (the first of `start`), the last
    one `target`. Nothing else may follow (the completion text is read with special tokens skipped)."""
    if len(completion) != length or completion[-1] != target:
        return False
    previous = start
    for node in completion:
        if node not in GRAPH.get(previous, ()):
            return False
        previous = node
    return True


def valid_edge_share(completion: str, start: str) -> float:
    """Share of the completion's steps that follow an edge of the graph (0 for an empty completion)."""
    previous, valid = start, 0
    for node in completion:
        valid += node in GRAPH.get(previous, ())
        previous = node
    return valid / max(len(completion), 1)


def distance_to(target: str) -> dict[str, int]:
    """Shortest-path distance (edges) from every node to `target` (0 for the target itself)."""
    distance, frontier = {target: 0}, [target]
    predecessors = {node: [m for m in NODES if node in GRAPH[m]] for node in NODES}
    while frontier:
        frontier_next = []
        for node in frontier:
            for predecessor in predecessors[node]:
                if predecessor not in distance:
                    distance[predecessor] = distance[node] + 1
                    frontier_next.append(predecessor)
        frontier = frontier_next
    return distance


def shaped_score(completion: str, start: str, target: str, length: int = WALK_LENGTH) -> float:
    """Training reward with partial credit: 1.0 for a correct walk; a valid walk of the right length that ends
    `d >= 1` edges short of the target earns `PARTIAL_CREDIT / d`; anything else (a missing edge, a wrong
    length) 0.0. The partial credit points the policy at the target (the binary reward alone gave too sparse a
    signal on this task: DAPO did not improve in 60 steps at lr 3e-4 and collapsed at 1e-3)."""
    if is_correct_walk(completion, start, target, length):
        return 1.0
    if len(completion) != length or valid_edge_share(completion, start) < 1.0:
        return 0.0
    return PARTIAL_CREDIT / distance_to(target)[completion[-1]]


def shaped_walk_reward(prompts, completions, start, target, **kwargs) -> list[float]:
    """TRL reward function: `shaped_score` of each completion (what the study trains on)."""
    return [shaped_score(completion_text(c), s, t) for c, s, t in zip(completions, start, target, strict=True)]


def walk_reward(prompts, completions, start, target, **kwargs) -> list[float]:
    """TRL reward function: 1.0 when the completion is a correct walk, else 0.0 (`start` and `target` are the dataset
    columns of those names)."""
    return [
        float(is_correct_walk(completion_text(c), s, t)) for c, s, t in zip(completions, start, target, strict=True)
    ]


def build_walk_dataset(num_prompts: int, seed: int = 0, *, references: bool = False):
    """Prompts with a uniformly random (start, target) pair (`random.Random(seed)`): columns prompt, start, target.

    With `references=True` a column "reference_completion" holds, for each row, one correct walk drawn uniformly
    from all of that prompt's answers (`uniform_correct_walk`, its own `random.Random(seed + 1)`, so the prompts are
    those of `references=False`): off-policy trajectories for `prefix_source="dataset"` that know where to go but
    favour no answer over another.
    """
    from datasets import Dataset

    rng = random.Random(seed)
    pairs = [(rng.choice(NODES), rng.choice(NODES)) for _ in range(num_prompts)]
    columns = {
        "prompt": [PROMPT_TEMPLATE.format(start=s, target=t) for s, t in pairs],
        "start": [s for s, _ in pairs],
        "target": [t for _, t in pairs],
    }
    if references:
        reference_rng = random.Random(seed + 1)
        columns["reference_completion"] = [uniform_correct_walk(s, t, reference_rng) for s, t in pairs]
    return Dataset.from_dict(columns)


def sample_walk(start: str, length: int, rng: random.Random) -> str:
    """A walk of the skewed prior: each step takes successor i with probability EDGE_WEIGHTS[i]."""
    node, walk = start, []
    for _ in range(length):
        node = rng.choices(GRAPH[node], weights=EDGE_WEIGHTS)[0]
        walk.append(node)
    return "".join(walk)


def uniform_correct_walk(start: str, target: str, rng: random.Random, length: int = WALK_LENGTH) -> str:
    """One correct walk, uniform over all `count_walks(start, target, length)` of them.

    Step by step, successor `v` of the current node is taken with probability proportional to the number of walks
    that finish the answer from `v` (`count_walks(v, target, steps_left)`); the product of those ratios telescopes to
    `1 / count_walks(start, target, length)` for every correct walk.
    """
    if count_walks(start, target, length) == 0:
        raise ValueError(f"uniform_correct_walk: no walk of {length} steps from {start!r} to {target!r}")
    node, walk = start, []
    for steps_left in range(length - 1, -1, -1):
        successors = GRAPH[node]
        weights = [count_walks(v, target, steps_left) for v in successors]
        node = rng.choices(successors, weights=weights)[0]
        walk.append(node)
    return "".join(walk)


def warmup_sft(
    model, tokenizer, steps: int = SFT_STEPS, *, batch_size: int = 32, learning_rate: float = 3e-3, seed: int = 0
) -> list[float]:
    """Supervised start policy, in place: cross-entropy on walks of the skewed prior labelled with their end node.

    Each row is ``walk:{start}>{end}=`` + the walk + <eos>, with a fresh walk per row (start uniform, steps from
    `sample_walk`, `random.Random(seed)`); the loop is `toy._sft_phase` (AdamW, prompt tokens carry no loss).
    Returns the loss of each step.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(steps * batch_size):
        start = rng.choice(NODES)
        walk = sample_walk(start, WALK_LENGTH, rng)
        prompt_ids = tokenizer(PROMPT_TEMPLATE.format(start=start, target=walk[-1]), add_special_tokens=False)
        answer_ids = tokenizer(walk, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt_ids["input_ids"] + answer_ids, [-100] * len(prompt_ids["input_ids"]) + answer_ids))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = toy._sft_phase(model, tokenizer, rows, steps, batch_size, learning_rate, 0.0, generator)
    model.zero_grad(set_to_none=True)
    return losses


def build_explore_policy(*, seed: int = 0, sft_steps: int = SFT_STEPS, tokenizer=None, **model_kwargs):
    """The study's start policy: `toy.build_tiny_model(seed=seed)` trained by `warmup_sft(steps=sft_steps)`.

    Returns `(model, tokenizer)`, the model in train mode.
    """
    tokenizer = tokenizer if tokenizer is not None else toy.build_tokenizer()
    model = toy.build_tiny_model(tokenizer, seed=seed, **model_kwargs)
    if sft_steps > 0:
        warmup_sft(model, tokenizer, sft_steps, seed=seed)
    return model, tokenizer
