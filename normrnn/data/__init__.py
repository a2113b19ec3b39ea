"""Data for normrnn: numpy batches for sequential (p)MNIST, digits, PTB characters and text8.

  task = make_task(config.data, seed)   # see tasks.py for the batch formats
  task.train_batch(step); task.eval_batches('valid'); task.describe()

Every problem a user can hit (missing or corrupt files, bad settings) is a DataError whose message
names the file or setting and says what to do.
"""
from normrnn.data.files import DataError
from normrnn.data.tasks import TASK_NAMES, make_task

__all__ = ['DataError', 'make_task', 'TASK_NAMES']
