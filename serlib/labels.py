"""Class names shared by every step, in the paper's order (neu, hap, sad, ang)."""

#: The paper's four classes, in the row/column order of its Tables 2 and 3.
PAPER_CLASSES: tuple[str, ...] = ("neutral", "happiness", "sadness", "anger")

#: Short names used in table headers, as the paper prints them.
SHORT_NAMES: dict[str, str] = {
    "neutral": "neu",
    "happiness": "hap",
    "sadness": "sad",
    "anger": "ang",
}
