"""The generated corpus: IEMOCAP's shape, the paper's shares, speech-like audio, determinism."""

from __future__ import annotations

import hashlib

import librosa
import numpy as np
import pytest
import soundfile as sf

from serlib.corpora import load_iemocap, select_utterances
from serlib.corpora.speech import synthesize_speech
from serlib.corpora.synthetic import PAPER_SHARES, generate_corpus, selected_counts
from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES


def tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_same_bytes(synthetic_root, tmp_path):
    again = generate_corpus(tmp_path, seed=0, size="tiny", progress=False)
    assert tree_digest(again) == tree_digest(synthetic_root)


def test_other_seed_other_audio(synthetic_root, tmp_path):
    other = generate_corpus(tmp_path, seed=1, size="tiny", progress=False)
    assert tree_digest(other) != tree_digest(synthetic_root)


def test_regenerating_with_other_settings_refuses(synthetic_root):
    with pytest.raises(SerlibError, match="other settings"):
        generate_corpus(synthetic_root.parent, seed=5, size="tiny", progress=False)


def test_iemocap_shape(synthetic_root):
    assert sorted(p.name for p in synthetic_root.glob("Session*")) == [
        f"Session{i}" for i in range(1, 6)]
    text = "\n".join(p.read_text() for p in synthetic_root.glob("Session*/dialog/EmoEvaluation/*"))
    for needle in ("\tC-E1:", "C-E1:\t", "A-E1:\tval ", "\txxx\t", "\texc\t", "\tfru\t"):
        assert needle.strip("\t") in text
    assert "C-F1:\t" in text and "C-M1:\t" in text  # the actors' self-evaluations
    table = load_iemocap(synthetic_root)
    assert (table["corpus"] == "generated").all()
    assert table["speaker"].nunique() == 10
    assert (~table["improvised"]).any()  # scripted dialogs exist
    assert (table["n_agree"] < 3).any() and (table["n_agree"] == 3).any()  # votes disagree
    info = sf.info(table["path"].iloc[0])
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")


def test_selection_has_paper_shares(synthetic_selection):
    shares = synthetic_selection["label"].value_counts(normalize=True) * 100
    for name in PAPER_CLASSES:
        assert abs(shares[name] - PAPER_SHARES[name]) < 1.0
    assert len(synthetic_selection) == 80


@pytest.mark.parametrize("size", ["tiny", "small", "iemocap"])
def test_count_table_margins(size):
    counts = selected_counts(size)
    assert counts.to_numpy().min() > 0
    if size == "iemocap":
        assert counts.sum().to_dict() == {
            "neutral": 1099, "happiness": 284, "sadness": 608, "anger": 289}
        assert counts.sum(axis=1).tolist() == [217, 205, 185, 208, 264, 274, 149, 221, 298, 259]
    else:
        shares = counts.sum() / counts.to_numpy().sum() * 100
        assert all(abs(shares[c] - PAPER_SHARES[c]) < 1.0 for c in PAPER_CLASSES)


def test_synthesize_speech_is_speech_like():
    y = synthesize_speech(duration_s=3.0, sample_rate=16000, seed=3)
    assert y.shape == (48000,) and y.dtype == np.float32
    assert np.array_equal(y, synthesize_speech(duration_s=3.0, sample_rate=16000, seed=3))
    assert 0 < np.abs(y).max() < 1
    # syllable rhythm: the frame energy rises and falls (a tone would be flat)
    rms = librosa.feature.rms(y=y, frame_length=512, hop_length=256)[0]
    assert np.percentile(rms, 90) > 5 * np.percentile(rms, 10)
    # voiced: a pitch is found in most loud frames, in a plausible range
    f0, voiced, _ = librosa.pyin(y, fmin=60, fmax=500, sr=16000, frame_length=1024)
    assert 80 < np.nanmedian(f0) < 400
    assert voiced.mean() > 0.3


def test_emotions_shift_prosody():
    def stats(emotion):
        level, pitch = [], []
        for seed in range(8):
            y = synthesize_speech(duration_s=2.0, emotion=emotion, speaker="Ses02M", seed=seed)
            level.append(20 * np.log10(np.sqrt(np.mean(y**2))))
            f0, voiced, _ = librosa.pyin(y, fmin=60, fmax=500, sr=16000, frame_length=1024)
            if voiced.any():  # breathy, quiet sad clips may have no frame pyin calls voiced
                pitch.append(np.median(f0[voiced]))
        return np.mean(level), np.mean(pitch)

    anger, sadness = stats("anger"), stats("sadness")
    assert anger[0] > sadness[0] + 4  # louder
    assert anger[1] > sadness[1] * 1.1  # higher


def test_bad_arguments():
    with pytest.raises(SerlibError, match="emotion='joy'"):
        synthesize_speech(duration_s=1.0, emotion="joy")
    with pytest.raises(SerlibError, match="size='huge'"):
        selected_counts("huge")


def test_task_is_learnable_but_not_trivial(tmp_path):
    """Honest difficulty: a simple baseline is clearly above chance and clearly below perfect.

    Logistic regression on utterance-mean (and std) MFCCs, leave-one-session-out folds, on the
    default small corpus.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    selection = select_utterances(load_iemocap(generate_corpus(tmp_path, progress=False)))
    features = []
    for path in selection["path"]:
        y, sr = sf.read(path, dtype="float32")
        mfcc = librosa.feature.mfcc(y=y, sr=sr, n_fft=2048, hop_length=512, n_mels=128,
                                    n_mfcc=40)
        features.append(np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)]))
    model = make_pipeline(StandardScaler(),
                          LogisticRegression(max_iter=2000, class_weight="balanced"))
    predicted = cross_val_predict(model, np.array(features), selection["label"],
                                  groups=selection["session"], cv=GroupKFold(5))
    ua = balanced_accuracy_score(selection["label"], predicted)
    assert 0.4 < ua < 0.85, ua
    recall = {c: np.mean(predicted[selection["label"] == c] == c) for c in PAPER_CLASSES}
    assert recall["happiness"] < recall["neutral"]  # the minority class is harder
