"""The results store: every file of a run, in one place.

A run with ``--out OUT`` owns these files and no others:

- ``OUT``: the Cohen et al. TSV that existing analysis scripts read.  CERTIFY rows:
  ``idx label predict radius correct time`` (predict -1 = abstain, radius 0 then);
  PREDICT rows: ``idx label predict correct time``; time as ``h:mm:ss.ffffff``.  Extra
  columns may follow Cohen's (e.g. ``samples`` for sequential certification).
- ``OUT.json``: the manifest (settings, models, environment, throughput), written atomically.
- ``OUT.lock``: held (``fcntl.flock``) while a process writes, so that a second process on the
  same ``OUT`` stops with a message instead of interleaving rows; removed at the end.
- ``OUT.part<r>`` (+ ``.json``, ``.lock``): the rows of torchrun rank ``r``, merged into ``OUT``
  by rank 0 at the end.

A grid's or an attack's folder holds one such set of files per configuration or radius, named by
``layout`` (the one place results file names are made), and ``index.json`` listing them.

Rows are written as each group of images completes (one image when ``n`` is at least the
batch size; several when their samples share batches), flushed and fsynced; a crash loses at
most the group in flight, and a torn last line is cut on resume.  Nothing is created, truncated
or replaced before ``ResultsStore.check`` has passed, and files that do not look like ours
(a TSV without our header, a JSON without our manifest's keys) are never replaced.
"""

from diffsmooth.results.layout import (
                                       ATTACK_COLUMNS,
                                       SEQUENTIAL_COLUMNS,
                                       attack_label,
                                       attack_store,
                                       configuration_label,
                                       grid_files,
                                       grid_store,
                                       recorded_spec,
                                       run_store,
)
from diffsmooth.results.sets import INDEX_FORMAT, INDEX_NAME, StoreSet, read_index
from diffsmooth.results.store import (
                                       ResultsStore,
                                       Sink,
                                       environment,
                                       lock_path,
                                       manifest_path,
                                       part_path,
                                       part_paths,
                                       radii_record,
                                       read_manifest,
                                       throughput,
                                       write_manifest,
)
from diffsmooth.results.tsv import (
                                       HEADERS,
                                       Results,
                                       Row,
                                       format_time,
                                       parse_time,
                                       read_results,
                                       read_rows,
                                       write_results,
)

__all__ = ["ATTACK_COLUMNS", "HEADERS", "INDEX_FORMAT", "INDEX_NAME", "Results", "ResultsStore", "Row",
           "SEQUENTIAL_COLUMNS", "Sink", "StoreSet", "attack_label", "attack_store", "configuration_label",
           "environment", "format_time", "grid_files", "grid_store", "lock_path", "manifest_path",
           "parse_time", "part_path", "part_paths", "radii_record", "read_index", "read_manifest", "read_results", "read_rows",
           "recorded_spec", "run_store", "throughput", "write_manifest", "write_results"]
