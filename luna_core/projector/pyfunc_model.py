"""The MLflow pyfunc model, logged as code (models-from-code): nothing of it is pickled, and its
weights load from the run's safetensors checkpoint."""

import mlflow
from mlflow.pyfunc import PythonModel

from luna_core.projector.checkpoints import ProjectorPyfunc


class LunaProjectorModel(ProjectorPyfunc, PythonModel):
    pass


mlflow.models.set_model(LunaProjectorModel())
