"""YOLO-NAS training pipeline stages: plain Python, no Airflow, no torch.

One module per stage (``materialize``, ``checkpoint``, ``train``, ``evaluate``, ``publish``);
``trainer`` is the command that runs inside the trainer environment (torch + super-gradients),
and ``operators`` the thin Airflow layer over the stages.
"""

__version__ = "0.1.0"
