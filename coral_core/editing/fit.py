"""Does the prompt fit? Two checks from the CLIP and the generator's own samples, before an
edit is trained, so a prompt that cannot or need not change anything leaves the image as it
was and says why (instead of recolouring or reshaping something at random).

Both read the direction prior's sample bank (prior.py: ``prior_samples`` seeded samples and
their CLIP embeddings), so they cost one text encoding:

- **nothing to aim at**: the prompt barely tells the generator's pictures apart. Its *range*
  (mean score of the ``prior_top`` best-matching samples minus the mean of all) is compared with the
  largest range any direction in the CLIP's image space reaches on the same samples (the bank's
  principal directions); below ``MIN_RELATIVE_RANGE`` the CLIP sees nothing of the prompt in
  anything this generator draws. Measured on both demo worlds' banks: shapes, "a dog" 0.23,
  colour prompts 0.72-0.85, "a square" 0.33; faces, "a dog" 0.11, "qwzx blorp" 0.18, "a
  smiling face" 0.03 (this CLIP cannot see a smile), "a face with a beard" 0.29, "... glasses"
  0.30, hair and eye prompts 0.39-0.53. 0.3 (chosen on shapes alone) refused the beard.
  A small range is not enough to refuse when the bank's scores fall into two groups
  (``UNIFORM_BIMODALITY``): a small part some pictures show and others lack, a beard on a face
  (0.22 with the bank of displayed pictures, and two clear groups); nonsense gives one bell.
- **already there**: the image scores at least as high as the samples that match the prompt
  best, less ``ALREADY_MARGIN`` of the range ("a cyan background" on a cyan background).

- **nothing of it there**: the prompt names something the image lacks ("a cyan triangle" with
  no triangle). With any one content word left out ("a triangle", "a cyan"), what remains
  should already be in the image if only that word is the change; the image's score for each
  such part is compared with the prompt's best bank samples' score for it. If every part
  falls short by more than ``ABSENT_OWN_GAP`` of that part's own range on the bank and more
  than ``ABSENT_PROMPT_GAP`` of the whole prompt's range, nothing the prompt names is there.
  (Both: a part like "a background" that tells pictures apart poorly has a tiny range of its
  own, so its shortfall alone is noise.) Each part's score is first freed of what the
  clause's other parts explain (a least-squares fit over the bank): the CLIP's "a background"
  leans towards some colours, so a green background fell short of the blue-background
  samples' score for "a background" and "a blue background" found no background.
  Prompts of one content word are not checked, nor clauses naming what every picture has
  (``EVER_PRESENT``: "a grey background" fits every picture's background).

After training, a third check reads how far the edit moved the image's CLIP score towards the
bank's best samples (``PromptFit.judge_outcome``): too little (the edit did not do what the
prompt says) or far too much (the CLIP reacts to words the generator draws nothing of) leaves
the image unchanged, with a warning.

Thresholds and measurements: docs/method.md ("The prompt fit check").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from .prior import SampleBank

MIN_RELATIVE_RANGE = 0.25
# Sarle's bimodality coefficient of a uniform spread: above it the bank's scores for a prompt
# fall into two groups (pictures that show it and pictures that do not), so the CLIP does see
# the prompt in the generator's pictures, however small their range (a beard on a face).
UNIFORM_BIMODALITY = 5 / 9
ALREADY_MARGIN = 0.1
# After training (see PromptFit.judge_outcome): the share of the way from the image's own CLIP
# score to the bank's best samples' score that the edit must cover (MIN_REACH); an edit is
# "too far" when it went more than MAX_REACH of that way AND more than MAX_OVERSHOOT of the
# prompt's range (on the bank) past the best samples' score. Why both: an image that starts
# close to the best samples makes the ratio explode (a correct recolour measured 2.2x, only
# 0.12 of the range past the best). Measured values: docs/method.md ("The prompt fit check").
ABSENT_OWN_GAP = 0.5
ABSENT_PROMPT_GAP = 0.25
# Words that name nothing on their own: leaving one out is not a test of the image.
FUNCTION_WORDS = frozenset({"a", "an", "the", "of", "on", "in", "with", "and", "at", "to",
                            "beside", "by", "for", "from", "its", "his", "her", "their"})
# Words that join two things named at once ("a red square on a blue background"): each side
# is checked on its own, since no one word left out of the whole prompt leaves what is there.
# Not "with" or "in": "a face with a beard" names one thing with a detail of it.
CLAUSE_WORDS = frozenset({"on", "and", "beside"})
# Words after which a clause names what the edit gives its thing ("a face with a beard": the
# beard is the change, the face what must be there): only the words before one are checked
# for being there. Checked whole, "a face with a beard" found 20 of 190 beardless faces
# lacking what it names (every face run of sessions 24-31) and left them unchanged.
DETAIL_WORDS = frozenset({"with", "wearing", "having"})
# Nouns for what every picture has: a clause naming one ("a grey background") is never found
# missing. The CLIP's score for "a background" leans towards some colours, so the check
# refused background recolours that fit (16 % on the faces bank, 3 % on the shapes bank;
# docs/method.md, "Every picture has a background").
EVER_PRESENT = frozenset({"background", "backdrop", "picture", "image", "photo", "scene"})
MIN_REACH = 0.5
MAX_REACH = 1.5
MAX_OVERSHOOT = 0.2


@dataclass
class PromptFit:
    relative_range: float   # the prompt's range / the largest range on the bank
    already: list[bool]     # per image: the image already matches the prompt
    warnings: list[str]
    start_scores: list[float] = field(default_factory=list)  # per image, before the edit
    best_score: float = float("nan")  # mean score of the bank's best-matching samples
    prompt_range: float = float("nan")  # best_score minus the bank's mean score
    reached: list[float] = field(default_factory=list)  # per image, after training
    off_target: list[bool] = field(default_factory=list)  # per image: reach out of bounds
    overshoot: list[float] = field(default_factory=list)  # per image: past the best, in ranges
    absent: list[bool] = field(default_factory=list)  # per image: nothing it names is there
    # rows another edit of the same training makes (trainer: a held edit's rows that reached):
    # left unchanged here, never judged and never named in a warning
    covered: list[int] = field(default_factory=list)
    # Sarle's bimodality coefficient of the bank's scores for the prompt (0: not computed)
    bimodality: float = 0.0
    # the share of the way under which an image counts as short (judge_outcome; None:
    # MIN_REACH)
    short_below: float | None = None
    # the CLIP lists the words it was trained on and read none of the prompt's (unread_words)
    unread: bool = False
    # per image, after training (prompt_and_rest): the rise of the CLIP's cosine with the
    # prompt, and how alike it reads everything else before and after (1: unchanged)
    gain: list[float] = field(default_factory=list)
    rest: list[float] = field(default_factory=list)
    # the CLIP embeddings of the unedited images [B, D] the check read (kept for the reading
    # after training, so they are encoded once)
    start_embeddings: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def unchanged_rows(self) -> list[int]:
        """The images the edit must leave exactly as they were."""
        return [i for i, already in enumerate(self.already)
                if already or self.aimless or i in self.covered
                or (i < len(self.off_target) and self.off_target[i])
                or (i < len(self.absent) and self.absent[i])]

    def judge_outcome(self, prompt: str, text_embedding: torch.Tensor,
                      edited_embeddings: torch.Tensor, warn_short: bool = True,
                      short_below: float | None = None) -> None:
        """After training: an edit that covered less than MIN_REACH of the way to the bank's
        best samples did not do what the prompt says (it names something the image lacks, or
        a change the edit could not make); one that went more than MAX_REACH of that way and
        more than MAX_OVERSHOOT of the prompt's range past the best samples' score moved the
        CLIP in a way none of the generator's own pictures of the prompt do (words the CLIP
        reacts to but this generator does not draw). Either way the image is left as it was,
        with a warning, instead of being changed at random. ``warn_short`` off: the rows that
        fell short are only recorded (``short_rows``), for a caller that trains them again;
        ``short_below`` (with it off) raises the bar they are recorded under."""
        self.reached = self.reach(text_embedding, edited_embeddings)
        self.overshoot = self.past_best(text_embedding, edited_embeddings)
        if not warn_short:
            self.short_below = short_below
        far, short = off_target_rows(self.reached, self.overshoot,
                                     [i for i, a in enumerate(self.already)
                                      if not a and i not in self.covered], self.short_below)
        self.off_target = [i in far or i in short for i in range(len(self.reached))]
        if short and warn_short:
            self.warnings.append(
                f"prompt {prompt!r}: the edit of image(s) {', '.join(map(str, short))} got only "
                f"{min(self.reached[i] for i in short):.0%} of the way to the generator's best "
                "pictures of it, so they are left unchanged: the prompt may name something "
                "the image lacks, or a change this edit cannot make (try more steps)")
        if far:
            self.warnings.append(
                f"prompt {prompt!r}: the edit of image(s) {', '.join(map(str, far))} moved the "
                f"CLIP {max(self.overshoot[i] for i in far):.1f} of the prompt's range past the "
                "generator's own best pictures of it, so they are left unchanged: the CLIP "
                "reacts to words that name nothing this generator draws; describe something "
                "it draws")

    def short_rows(self) -> list[int]:
        """After training: the images left unchanged because their edit got under
        ``short_below`` (MIN_REACH unless a caller that trains them again raised it) of the
        way."""
        bar = short_bar(self.short_below)
        return [i for i, off in enumerate(self.off_target) if off and self.reached[i] < bar]

    @property
    def aimless(self) -> bool:
        """The CLIP sees nothing of the prompt in the generator's pictures: a small range
        and no two groups among the bank's scores, or not one word of it that it knows."""
        return self.unread or aimless(self.relative_range, self.bimodality)

    def reach(self, text_embedding: torch.Tensor, edited_embeddings: torch.Tensor
              ) -> list[float]:
        """Per image: how far the edit moved its CLIP score from where it started towards the
        bank's best samples' (0: not at all, 1: as well as they match the prompt)."""
        return reach_of(self.start_scores, _scores(text_embedding, edited_embeddings),
                        self.best_score)

    def past_best(self, text_embedding: torch.Tensor, edited_embeddings: torch.Tensor
                  ) -> list[float]:
        """Per image: how far the edited score lies past the bank's best samples' score, in
        units of the prompt's range on the bank (0: as good as they are; negative: short)."""
        return past(_scores(text_embedding, edited_embeddings), self.best_score,
                    self.prompt_range)


def prompt_and_rest(text_embedding: torch.Tensor, original: torch.Tensor,
                    edited: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per image (CLIP image embeddings ``original`` and ``edited`` [B, D]): the rise of the
    cosine with the prompt's text (``gain``), and the cosine between the two embeddings with
    their component along the text removed (``rest``: 1 when the CLIP sees nothing else
    changed). Why: an edit can please the CLIP by changing what the prompt does not name (a
    face repainted for "long hair"); the two figures are in the same units, so an edit that
    loses more of the rest than it gains of the prompt over another can be told apart."""
    t = F.normalize(text_embedding.reshape(-1).float().cpu(), dim=0)
    a = F.normalize(original.float().cpu(), dim=-1)
    b = F.normalize(edited.float().cpu(), dim=-1)
    gain = (b @ t - a @ t).tolist()
    rest = F.cosine_similarity(a - (a @ t)[:, None] * t, b - (b @ t)[:, None] * t, dim=-1)
    return [round(g, 4) for g in gain], [round(r, 4) for r in rest.tolist()]


def aimless(relative_range: float, bimodality: float) -> bool:
    """Nothing to aim at: the prompt's range is under MIN_RELATIVE_RANGE of the clearest
    direction's and its scores on the bank are no more two groups than a uniform spread."""
    return relative_range < MIN_RELATIVE_RANGE and bimodality <= UNIFORM_BIMODALITY


def bimodality_coefficient(scores: torch.Tensor) -> float:
    """Sarle's coefficient (skewness^2 + 1) / kurtosis, with the sample-size corrections:
    5/9 for a uniform spread, about 1/3 for a normal one, towards 1 for two clear groups."""
    n = scores.numel()
    if n < 4:
        return 0.0
    x = scores.double() - scores.double().mean()
    m2, m3, m4 = float(x.pow(2).mean()), float(x.pow(3).mean()), float(x.pow(4).mean())
    if m2 <= 0:
        return 0.0
    g1, g2 = m3 / m2 ** 1.5, m4 / m2 ** 2 - 3
    skew = g1 * (n * (n - 1)) ** 0.5 / (n - 2)
    excess = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * g2 + 6)
    return (skew ** 2 + 1) / (excess + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))


def off_target_rows(reached: Sequence[float], overshoot: Sequence[float],
                    judged: Sequence[int], short_below: float | None = None
                    ) -> tuple[list[int], list[int]]:
    """(too far, too short) among the ``judged`` rows: the one rule for how far an edit may
    move the CLIP, used after per-image training (PromptFit.judge_outcome) and when a
    per-prompt edit meets new scenes at apply (SceneCheck.off_target). ``short_below``: a
    higher bar for "too short" (``short_bar``), for callers that train such rows again."""
    far = [i for i in judged if reached[i] > MAX_REACH and overshoot[i] > MAX_OVERSHOOT]
    bar = short_bar(short_below)
    short = [i for i in judged if reached[i] < bar]
    return far, short


def short_bar(short_below: float | None) -> float:
    """The share of the way under which an image is short: MIN_REACH, or a caller's higher
    bar (never a lower one: an image under MIN_REACH did not do what the prompt says)."""
    return MIN_REACH if short_below is None else max(short_below, MIN_REACH)


def reach_of(start: Sequence[float], edited: Sequence[float], best: float) -> list[float]:
    """Per image: how far its CLIP score moved from ``start`` towards the bank's best samples'
    score ``best`` (0: not at all, 1: as well as they match the prompt)."""
    return [round((s - s0) / max(best - s0, 1e-6), 3) for s, s0 in zip(edited, start)]


def past(edited: Sequence[float], best: float, prompt_range: float) -> list[float]:
    """Per image: how far its score lies past ``best``, in units of the prompt's range on the
    bank (0: as good as the best samples; negative: short of them)."""
    return [round((s - best) / max(prompt_range, 1e-6), 3) for s in edited]


def _scores(text_embedding: torch.Tensor, images: torch.Tensor) -> list[float]:
    return (images.float().cpu() @ text_embedding.reshape(-1).float().cpu()).tolist()


def text_range(bank: SampleBank, text_embedding: torch.Tensor, top: int) -> float:
    """How far the bank's ``top`` best samples for a text score above the bank's mean: the
    unit the fit check reads a prompt's reach in."""
    return _range(bank.embeddings.float() @ text_embedding.reshape(-1).float().cpu(), top)[0]


def _range(scores: torch.Tensor, top: int) -> tuple[float, float]:
    best = scores.topk(min(top, scores.numel())).values.mean()
    return float(best - scores.mean()), float(best)


def best_range(bank: SampleBank, top: int, components: int = 8) -> float:
    """The largest range any of the bank's principal directions (either sign) reaches."""
    emb = bank.embeddings.float()
    _, _, v = torch.linalg.svd(emb - emb.mean(0), full_matrices=False)
    return max(_range(emb @ (sign * v[i]), top)[0]
               for i in range(min(components, v.shape[0])) for sign in (1, -1))


def prompt_clauses(prompt: str) -> list[str]:
    """The things a prompt names, split at the words that join them ("a red square on a blue
    background": "a red square", "a blue background")."""
    clauses: list[str] = []
    current: list[str] = []
    for word in prompt.replace(",", " , ").replace(";", " ; ").split():
        if word.lower() in CLAUSE_WORDS or word in (",", ";"):
            if current:
                clauses.append(" ".join(current))
            current = []
        else:
            current.append(word)
    if current:
        clauses.append(" ".join(current))
    return clauses


def prompt_parts(prompt: str) -> list[tuple[int, str]]:
    """(clause, the clause with one content word left out), for each content word of each
    clause of two or more ("a cyan triangle": "a triangle", "a cyan"; "a red square on a blue
    background": "a square", "a red"); none for a clause of one or one naming what every
    picture has (``EVER_PRESENT``). A clause is read up to its first ``DETAIL_WORDS`` word:
    "a face with a beard" is checked as "a face" (one content word: no parts)."""
    parts = []
    for c, clause in enumerate(prompt_clauses(prompt)):
        words = clause.split()
        bare = bare_words(words)
        head = next((i for i, w in enumerate(bare) if w in DETAIL_WORDS), len(bare))
        words, bare = words[:head], bare[:head]
        if EVER_PRESENT.intersection(bare):
            continue
        content = [i for i, w in enumerate(bare) if w not in FUNCTION_WORDS]
        if len(content) >= 2:
            parts += [(c, _fix_articles(words[:i] + words[i + 1:])) for i in content]
    return parts


def unread_words(prompt: str, vocabulary: frozenset[str] | None) -> tuple[list[str], bool]:
    """(the prompt's content words the CLIP never read in training, whether that is every
    content word) for a CLIP that lists its vocabulary (``CoralClip.vocabulary``: the demo
    CLIPs); ([], False) for any other. Why: a CLIP trained on a few dozen words maps a word it
    never read wherever its untrained token rows happen to point; the shapes demo CLIP reads
    "qwzx blorp" as a colour with a colour's confidence, so nothing the sample bank holds tells
    it from a real prompt (docs/history.md, session 22). A CLIP trained on the open web has
    read every word and lists none."""
    if not vocabulary:
        return [], False
    content = [w for w in bare_words(prompt.split()) if w and w not in FUNCTION_WORDS]
    unread = list(dict.fromkeys(w for w in content if w not in vocabulary))
    return unread, bool(content) and len(unread) == len(set(content))


def bare_words(words: list[str]) -> list[str]:
    """The words lower-cased and without trailing punctuation, to compare with word lists."""
    return [w.lower().strip(".,;:!?") for w in words]


def _fix_articles(words: list[str]) -> str:
    """The words joined, each "a"/"an" made to suit the word now after it: "an orange circle"
    less "orange" is "a circle", not "an circle" (the CLIP reads the two differently: on the
    demo bank "an circle" separates the pictures twice as well as "a circle", and the check
    wrongly found orange circles missing)."""
    out = list(words)
    for i in range(len(out) - 1):
        if out[i].lower() in ("a", "an"):
            vowel = out[i + 1][:1].lower() in "aeiou"
            article = "an" if vowel else "a"
            out[i] = article.capitalize() if out[i][:1].isupper() else article
    return " ".join(out)


@dataclass
class SceneCheck:
    """What a scene must show for an edit to act on it, read off the sample bank once so that
    it can travel in a per-prompt edit's file and judge scenes at apply time with nothing but
    the same CLIP's image encoder (a per-prompt edit applied to a batch meets scenes nobody
    checked at training). Per image: ``already`` (it matches the prompt as well as the bank's
    best samples, less ``ALREADY_MARGIN`` of the range) and ``absent`` (every ``prompt_parts``
    part falls short of the best samples' score for it by more than both bounds; see the
    module's docstring)."""
    text: torch.Tensor           # [D] the prompt's text embedding
    best_score: float            # mean score of the prompt's best bank samples
    prompt_range: float          # best_score minus the bank's mean score
    parts: torch.Tensor          # [P, D] text embeddings of prompt_parts (P may be 0)
    part_targets: torch.Tensor   # [P] the best samples' mean score for each part
    part_ranges: torch.Tensor    # [P] each part's own range on the bank
    part_clauses: torch.Tensor   # [P] which clause of the prompt each part comes from
    # [P, P]: part j's score less sum_k coefs[j, k] * part k's score is what the check reads
    # (k: the other parts of j's clause; zeros: the raw scores, as edits saved before it)
    part_coefs: torch.Tensor | None = None

    @classmethod
    def from_bank(cls, bank: SampleBank, text_embedding: torch.Tensor, top: int,
                  part_embeddings: torch.Tensor | None = None,
                  part_clauses: list[int] | None = None) -> "SceneCheck":
        emb = bank.embeddings.float()
        t = text_embedding.reshape(-1).float().cpu()
        on_bank = emb @ t
        rng, best = _range(on_bank, top)
        parts = (part_embeddings.float().cpu() if part_embeddings is not None
                 else torch.zeros(0, t.numel()))
        best_rows = on_bank.topk(min(top, on_bank.numel())).indices
        clauses = part_clauses if part_clauses is not None else [0] * parts.shape[0]
        if len(clauses) != parts.shape[0]:
            raise ValueError(f"{len(clauses)} clause numbers for {parts.shape[0]} parts")
        on_bank_parts = emb @ parts.T  # [N, P]
        coefs = _partial_out(on_bank_parts, clauses)
        residual = _residual(on_bank_parts, coefs)
        targets = residual[best_rows].mean(0)
        ranges = [_range(residual[:, j], top)[0] for j in range(parts.shape[0])]
        return cls(t, best, rng, parts, targets.float(),
                   torch.tensor(ranges, dtype=torch.float32),
                   torch.tensor(clauses, dtype=torch.float32), coefs)

    def scores(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        return image_embeddings.float().cpu() @ self.text

    def already(self, image_embeddings: torch.Tensor) -> list[bool]:
        rng = self.prompt_range
        return [bool(rng > 0 and s >= self.best_score - ALREADY_MARGIN * rng)
                for s in self.scores(image_embeddings).tolist()]

    def absent(self, image_embeddings: torch.Tensor) -> list[bool]:
        """Per image: something the prompt names is not there: every part of some clause
        falls short (False for all when no clause has two content words or the prompt has
        no range on the bank, and where ``already``)."""
        images = image_embeddings.float().cpu()
        n = images.shape[0]
        if self.parts.shape[0] == 0 or not self.prompt_range > 0:
            return [False] * n
        coefs = self.part_coefs if self.part_coefs is not None else \
            torch.zeros(self.parts.shape[0], self.parts.shape[0])
        gaps = self.part_targets[None, :] - _residual(images @ self.parts.T, coefs)  # [N, P]
        short = (gaps > ABSENT_OWN_GAP * self.part_ranges[None, :]) & \
            (gaps > ABSENT_PROMPT_GAP * self.prompt_range)
        lacking = torch.zeros(n, dtype=torch.bool)
        for clause in self.part_clauses.unique():
            lacking |= short[:, self.part_clauses == clause].all(1)
        return [a and not al for a, al in zip(lacking.tolist(), self.already(images))]

    def acts_on(self, image_embeddings: torch.Tensor) -> list[bool]:
        """Per image: the edit may change it (it neither already shows what the prompt names
        nor lacks it); apply leaves the others exactly as they were."""
        return [not (a or al) for a, al in zip(self.absent(image_embeddings),
                                               self.already(image_embeddings))]

    def off_target(self, start_scores: Sequence[float], edited_embeddings: torch.Tensor,
                   judged: Sequence[int], strength: float = 1.0) -> tuple[list[int], list[int]]:
        """(too far, too short) among the ``judged`` rows, by the rule per-image edits meet
        after training (off_target_rows): at apply a per-prompt edit meets scenes nobody
        trained it on, and on some it moves the CLIP far past the generator's own best
        pictures of the prompt (words the CLIP reacts to but the generator draws nothing of:
        the whole scene repainted) or barely at all (the change did not happen there).
        ``strength``: the apply strength; the reach is read per unit of it (half strength is
        meant to go half way)."""
        edited = self.scores(edited_embeddings).tolist()
        reached = [r / strength for r in reach_of(start_scores, edited, self.best_score)]
        return off_target_rows(reached, past(edited, self.best_score, self.prompt_range),
                               judged)

    def tensors(self) -> dict[str, torch.Tensor]:
        """For the edit file (edit.py): every number as a tensor, nothing to parse."""
        p = self.parts.shape[0]
        return {"text": self.text, "parts": self.parts,
                "stats": torch.tensor([self.best_score, self.prompt_range]),
                "part_stats": torch.stack([self.part_targets, self.part_ranges,
                                           self.part_clauses], 1)
                if p else torch.zeros(0, 3),
                "part_coefs": self.part_coefs.contiguous() if self.part_coefs is not None
                else torch.zeros(p, p)}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> "SceneCheck":
        stats, part_stats = t["stats"].float(), t["part_stats"].float()
        coefs = t.get("part_coefs")
        return cls(t["text"].float(), float(stats[0]), float(stats[1]), t["parts"].float(),
                   part_stats[:, 0].contiguous(), part_stats[:, 1].contiguous(),
                   part_stats[:, 2].contiguous(),
                   coefs.float().contiguous() if coefs is not None else None)


def _partial_out(scores: torch.Tensor, clauses: list[int]) -> torch.Tensor:
    """[P, P] least-squares coefficients (with an intercept, dropped) of each part's bank
    scores [N, P] on the other parts of its clause; zero elsewhere and on the diagonal."""
    p = scores.shape[1]
    coefs = torch.zeros(p, p)
    for j in range(p):
        others = [k for k in range(p) if k != j and clauses[k] == clauses[j]]
        if not others:
            continue
        x = torch.cat([scores[:, others], torch.ones(scores.shape[0], 1)], 1).double()
        fit = torch.linalg.lstsq(x, scores[:, j:j + 1].double()).solution[:-1, 0]
        coefs[j, others] = fit.float()
    return coefs


def _residual(scores: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
    """[N, P]: each part's score less what the other parts of its clause explain."""
    return scores - scores @ coefs.T


def check_prompt_fit(bank: SampleBank, text_embedding: torch.Tensor,
                     image_embeddings: torch.Tensor, prompt: str, top: int,
                     part_embeddings: torch.Tensor | None = None,
                     part_clauses: list[int] | None = None,
                     vocabulary: frozenset[str] | None = None) -> PromptFit:
    """``top``: the size of the prompt's best-matching group of bank samples (the prior's
    ``prior_top``: one notion of "the generator's best pictures of the prompt").
    ``part_embeddings``, ``part_clauses``: the text embeddings and clause numbers of
    ``prompt_parts(prompt)`` (None or empty: the "nothing of it there" check is skipped).
    ``vocabulary``: the words the CLIP was trained on, where it lists them
    (``unread_words``)."""
    n_images = image_embeddings.shape[0]
    unread, reads_nothing = unread_words(prompt, vocabulary)
    if bank.embeddings.shape[0] <= 2 * top:  # too few samples to tell a best group from the rest
        return PromptFit(1.0, [False] * n_images,
                         _unread_warnings(prompt, unread, reads_nothing, vocabulary),
                         unread=reads_nothing)
    scene = SceneCheck.from_bank(bank, text_embedding, top, part_embeddings, part_clauses)
    rng, best = scene.prompt_range, scene.best_score
    relative = rng / max(best_range(bank, top), 1e-8)
    bimodality = bimodality_coefficient(scene.scores(bank.embeddings))
    scores = scene.scores(image_embeddings)
    already = scene.already(image_embeddings)
    absent = scene.absent(image_embeddings)
    warnings = _unread_warnings(prompt, unread, reads_nothing, vocabulary)
    nothing = reads_nothing or aimless(relative, bimodality)
    if nothing and not reads_nothing:  # (an unread prompt is said by _unread_warnings)
        warnings.append(
            f"prompt {prompt!r}: the CLIP finds nothing like it in this generator's pictures "
            f"(it separates them {relative:.2f} as well as the clearest direction; at least "
            f"{MIN_RELATIVE_RANGE} expected, or two groups of them), so the edit changes "
            "nothing; describe something the generator draws")
    elif not nothing and any(already):
        which = ", ".join(str(i) for i, a in enumerate(already) if a)
        warnings.append(f"prompt {prompt!r}: image(s) {which} already match it as well as the "
                        "generator's best samples do, so they are left unchanged")
    if not nothing and any(absent):
        which = ", ".join(str(i) for i, a in enumerate(absent) if a)
        warnings.append(f"prompt {prompt!r}: image(s) {which} seem to lack what it names (with "
                        "any one word left out, the rest is still far from the generator's "
                        "best pictures of the prompt), so they are left unchanged; name "
                        "something in the image, or switch this check off (coral train "
                        "--no-absent-check; Train Edit Advanced: absent_check off)")
    return PromptFit(relative, already, warnings, [float(v) for v in scores], best, rng,
                     absent=absent, bimodality=bimodality, unread=reads_nothing,
                     start_embeddings=image_embeddings.detach().float().cpu())


def _unread_warnings(prompt: str, unread: list[str], reads_nothing: bool,
                     vocabulary: frozenset[str] | None) -> list[str]:
    """What to tell a user whose prompt has words the CLIP never read (``unread_words``)."""
    if not unread or not vocabulary:
        return []
    known = ", ".join(sorted(w for w in vocabulary if w not in FUNCTION_WORDS and w.isalpha()))
    words = ", ".join(repr(w) for w in unread)
    if reads_nothing:
        return [f"prompt {prompt!r}: this CLIP was never trained on {words}, so the edit "
                f"changes nothing; it knows only: {known}"]
    return [f"prompt {prompt!r}: this CLIP was never trained on {words} and reads only the "
            f"rest of the prompt; it knows: {known}"]
