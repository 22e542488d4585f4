"""Networks (nets.py), the LightningModule that trains them (module.py), and the exported,
framework-free MLflow model (pyfunc_model.py, export.py)."""
