"""A fixture IEMOCAP tree with the real counts of the paper's selection, written fast.

The tree is built from a compact table (selected utterances per speaker and class, in the real
id forms, plus distractors), with EmoEvaluation files in the release's formats and very short
wavs: enough for the loader, which reads durations from the wav headers only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from serlib.corpora.synthetic import selected_counts

# selected utterances per speaker: neutral, happiness, sadness, anger. The same table as the
# generator's --size iemocap; its margins are checked against GUIDE.md's numbers in the tests.
SELECTED = {speaker: tuple(int(n) for n in row)
            for speaker, row in selected_counts("iemocap").iterrows()}
CODES = ("neu", "hap", "sad", "ang")
WORDS = {"neu": "Neutral state", "hap": "Happiness", "sad": "Sadness", "ang": "Anger",
         "exc": "Excited", "fru": "Frustration", "xxx": "Other:confused"}
# improvised dialogs per session, in the real id forms (incl. impro05a/b of session 3)
IMPRO = {s: [f"Ses{s:02d}{g}_impro0{k}" for g in "FM" for k in (1, 2, 4)] for s in range(1, 6)}
IMPRO[3] += ["Ses03M_impro05a", "Ses03M_impro05b"]
SCRIPT = {s: [f"Ses{s:02d}F_script01_1"] for s in range(1, 6)}
SCRIPT[5] += ["Ses05M_script01_1b"]


def _block(uid: str, code: str, start: float, agree: int) -> str:
    word = WORDS[code]
    dissent = "Frustration" if code != "fru" else "Anger"
    # the first agreeing vote names a second emotion too; a fourth evaluator dissents
    votes = [f"{word}; {dissent}"] * min(agree, 1) + [word] * (agree - 1)
    votes += [dissent] * (3 - agree) + (["Other:bored"] if agree == 3 else [])
    lines = [f"[{start:.4f} - {start + 1.5:.4f}]\t{uid}\t{code}\t[2.5000, 3.0000, 3.5000]"]
    lines += [f"C-E{k}:\t{v};\t()" for k, v in enumerate(votes, start=1)]
    lines += [f"C-{uid[-4]}1:\t{word};\t(self)", "A-E1:\tval 3; act 2; dom  2;\t()"]
    return "\n".join(lines) + "\n"


def build_real_count_tree(parent: Path) -> Path:
    """Write the fixture tree under ``parent/IEMOCAP_full_release`` and return that root."""
    root = parent / "IEMOCAP_full_release"
    silence = np.zeros(160, dtype=np.int16)  # 10 ms: header durations are all the loader reads
    files: dict[tuple[int, str], list[str]] = {}
    turn: dict[tuple[str, str], int] = {}

    def add(speaker: str, dialogs: list[str], code: str, agree: int, i: int) -> None:
        session, gender = int(speaker[3:5]), speaker[-1]
        dialog = dialogs[i % len(dialogs)]  # speakers appear in dialogs led by either actor
        n = turn.get((dialog, gender), 0)
        turn[(dialog, gender)] = n + 1
        uid = f"{dialog}_{gender}{n:03d}"
        files.setdefault((session, dialog), []).append(_block(uid, code, 2.0 * n, agree))
        wav = root / f"Session{session}" / "sentences" / "wav" / dialog / f"{uid}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav, silence, 16000, subtype="PCM_16")

    for speaker, counts in SELECTED.items():
        session = int(speaker[3:5])
        i = 0
        for code, count in zip(CODES, counts, strict=True):
            for _ in range(count):
                add(speaker, IMPRO[session], code, 2 + i % 2, i)
                i += 1
        # distractors: other labels, too little agreement, scripted dialogs
        for code in ("exc", "fru", "xxx"):
            add(speaker, IMPRO[session], code, 2, i)
            i += 1
        add(speaker, IMPRO[session], "neu", 1, i)
        for code in CODES:
            add(speaker, SCRIPT[session], code, 3, i)
            i += 1
    for (session, dialog), blocks in files.items():
        folder = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        folder.mkdir(parents=True, exist_ok=True)
        text = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n" + "\n".join(blocks)
        (folder / f"{dialog}.txt").write_text(text)
    return root
