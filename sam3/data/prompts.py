"""The text prompts of a clip: positives, negatives and the caps on prompts and masklets.

A prompt is positive in a clip when one of its masklets is visible in one of the clip's frames. The
video's negative pairs (0 masklets) are negatives; optionally, phrases of other videos are sampled as
extra negatives. Crowd masklets are never targets; a prompt with one is not exhaustive. When a cap
drops some masklets of a prompt, that prompt is no longer exhaustive; when it drops all of them, the
prompt is dropped (the phrase is present, so it cannot serve as a negative).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sam3.data.index import Masklet, PhrasePair


@dataclass(frozen=True)
class PromptConfig:
    """How the prompts of a clip are chosen.

    Attributes:
        max_prompts: cap on prompts per clip (positives are kept first), None = no cap.
        max_masklets: cap on masklets per clip over all its prompts, None = no cap.
        num_sampled_negatives: extra negatives per clip, drawn from the dataset's phrases that are not
            annotated for the video (treated as exhaustive: use only where that assumption holds).
        shuffle: randomise which prompts survive a cap and their order (training); otherwise
            positives then negatives in annotation order.
    """

    max_prompts: int | None = None
    max_masklets: int | None = None
    num_sampled_negatives: int = 0
    shuffle: bool = True


@dataclass
class ClipPrompt:
    """A prompt of a clip with the masklets it refers to.

    Attributes:
        phrase: the noun phrase.
        masklets: its target masklets (indices into the video's masklet list).
        is_exhaustive: every instance of the phrase is among `masklets`.
        is_positive: one of `masklets` is visible in the clip.
    """

    phrase: str
    masklets: list[int]
    is_exhaustive: bool
    is_positive: bool


def select_prompts(
    pairs: list[PhrasePair],
    masklets: list[Masklet],
    clip_frames: list[int],
    config: PromptConfig,
    rng: np.random.Generator,
    all_phrases: list[str] | None = None,
) -> list[ClipPrompt]:
    """The prompts of one clip.

    Args:
        pairs: the video's phrase pairs.
        masklets: the video's masklets.
        clip_frames: video frame positions of the clip.
        config: caps and negative sampling.
        rng: the clip's random stream.
        all_phrases: the dataset's phrases, needed when `config.num_sampled_negatives` > 0.
    """
    positives, negatives = [], []
    for pair in pairs:
        mine = [i for i, m in enumerate(masklets) if m.category_id == pair.category_id]
        targets = [i for i in mine if not masklets[i].is_crowd]
        visible = [i for i in targets if any(masklets[i].is_visible(t) for t in clip_frames)]
        exhaustive = pair.is_exhaustive and len(targets) == len(mine)
        prompt = ClipPrompt(pair.phrase, visible, exhaustive, is_positive=bool(visible))
        (positives if visible else negatives).append(prompt)
    if config.num_sampled_negatives > 0:
        if not all_phrases:
            raise ValueError("num_sampled_negatives > 0 needs the dataset's phrases (all_phrases)")
        taken = {pair.phrase for pair in pairs}
        candidates = [p for p in dict.fromkeys(all_phrases) if p not in taken]
        count = min(config.num_sampled_negatives, len(candidates))
        for k in rng.choice(len(candidates), size=count, replace=False) if count else []:
            negatives.append(ClipPrompt(candidates[int(k)], [], True, False))
    if config.shuffle:
        positives = [positives[i] for i in rng.permutation(len(positives))]
        negatives = [negatives[i] for i in rng.permutation(len(negatives))]
    prompts = positives + negatives
    if config.max_prompts is not None:
        prompts = prompts[: config.max_prompts]
    if config.max_masklets is not None:
        budget, kept = config.max_masklets, []
        for prompt in prompts:
            if len(prompt.masklets) > budget:
                if budget == 0:
                    continue  # present in the clip but no target left: neither positive nor negative
                prompt.masklets = prompt.masklets[:budget]
                prompt.is_exhaustive = False
            budget -= len(prompt.masklets)
            kept.append(prompt)
        prompts = kept
    if config.shuffle:
        prompts = [prompts[i] for i in rng.permutation(len(prompts))]
    return prompts
