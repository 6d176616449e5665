"""audit: the train and val photos that are probably filed under the wrong class, ranked by
cleanlab on out-of-fold probabilities of the pretrained backbone's features
(results/audit/label_issues.csv) and their count. The plot stage draws the most suspect."""

from flowerpipe.audit.labels import audit_labels
from flowerpipe.config import load_config
from flowerpipe.core.atomic import write_csv, write_json
from flowerpipe.core.console import log, run_main
from flowerpipe.data.prepared import load_prepared
from flowerpipe.model.architectures import check_architecture
from flowerpipe.model.build import build_model
from flowerpipe.model.devices import resolve_device

FIELDS = ["relpath", "given", "suggested", "score"]


def main() -> None:
    cfg = load_config()
    size = cfg.data.image_size
    check_architecture(cfg.model.arch, cfg.model.weights, size, size)  # audit scores the evaluation side
    data = load_prepared("data/prepared")
    if cfg.model.weights is None:
        log.warning(
            "audit: model.weights is null: random features cannot tell a wrong label from a hard photo; "
            "nothing is flagged"
        )
        issues, metrics = [], {"scored": 0, "flagged": None}
    else:
        model = build_model(cfg.model.arch, cfg.model.weights, len(data.classes)).eval()
        device = resolve_device(cfg.train.device)
        issues, metrics = audit_labels(model, data, size, cfg.evaluate.batch_size, device, cfg.audit.folds)
        log.info("audit: %d of %d train and val photos flagged", metrics["flagged"], metrics["scored"])
    write_csv("results/audit/label_issues.csv", issues, FIELDS)
    write_json("results/audit/metrics.json", metrics)


if __name__ == "__main__":
    run_main(main)
