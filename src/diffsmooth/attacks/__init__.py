"""Attacks on base and smoothed classifiers: empirical robustness and a certificate audit.

- ``attack``: l2 PGD against ``h`` or, SmoothAdv-style with EOT over the smoothing
  noise, against the smoothed ``g`` (``pgd``).
- ``empirical_accuracy``: attack, then PREDICT at the attacked point (``empirical``).
- ``audit_rows`` / ``audit``: attack certified points inside their radius and test
  the certificate's promise there (``audit``).
- ``AttackTask`` (``attacks.run``, imported from there): an attack over a dataset as a task of
  the runner, one PREDICT TSV per eps.
"""

from diffsmooth.attacks.audit import (
    AuditRecord,
    AuditReport,
    AuditSettings,
    audit,
    audit_rows,
    auditable_rows,
    check_certify_rows,
    summarize_audit,
)
from diffsmooth.attacks.empirical import EmpiricalRecord, EmpiricalSettings, check_eps_list, empirical_accuracy
from diffsmooth.attacks.pgd import AttackConfig, AttackResult, AttackSurface, attack, attack_surface, check_eps

__all__ = [
    "AttackConfig",
    "AttackResult",
    "AttackSurface",
    "AuditRecord",
    "AuditReport",
    "AuditSettings",
    "EmpiricalRecord",
    "EmpiricalSettings",
    "attack",
    "attack_surface",
    "audit",
    "audit_rows",
    "auditable_rows",
    "check_certify_rows",
    "check_eps",
    "check_eps_list",
    "empirical_accuracy",
    "summarize_audit",
]
