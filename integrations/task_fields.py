"""Names of the fields fracture-al writes into a Label Studio task's data, in one place: the
importer, the workers and FiftyOne read and write the same ones."""

# Where a labelled X-ray belongs: "train", "val" (the frozen validation set) or "test"
# (see worker/validation.py). Data Manager filters and FiftyOne views use it too.
SPLIT_FIELD = "split"

# The review queue's last ranking of an unlabelled task (worker/jobs.rank_queue): its place, its
# uncertainty, the arm that put it there ("queue" or "random", sampling/control_arm.py) and the
# model version whose prediction annotators saw; `fracture-al report` reads the last two back.
REVIEW_RANK_FIELD = "review_rank"
REVIEW_UNCERTAINTY_FIELD = "review_uncertainty"
REVIEW_ARM_FIELD = "review_arm"
REVIEW_MODEL_VERSION_FIELD = "review_model_version"

# Tasks flagged for another look, e.g. from FiftyOne (integrations/label_studio.request_review).
REVIEW_REQUEST_FIELD = "review_request"
