"""Data for normrnn: numpy batches for sequential (p)MNIST, digits, PTB characters, text8 and
question answering (the CNN corpus, cnn_qa.py, and the CPU-scale PTB cloze task, cloze.py).

  task = make_task(config.data, seed)   # see tasks.py (and qa.py) for the batch formats
  task.train_batch(step); task.eval_batches('valid'); task.describe()

Every problem a user can hit (missing or corrupt files, bad settings) is a DataError whose message
names the file or setting and says what to do.
"""
from normrnn.data.files import DataError
from normrnn.data.tasks import TASK_NAMES, make_task

__all__ = ['DataError', 'make_task', 'TASK_NAMES']
