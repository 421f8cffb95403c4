"""Names of the fields fracture-al writes into a Label Studio task's data, in one place: the
importer, the workers and FiftyOne read and write the same ones."""

# Where a labelled X-ray belongs: "train", "val" (the frozen validation set) or "test"
# (see worker/validation.py). Data Manager filters and FiftyOne views use it too.
SPLIT_FIELD = "split"
