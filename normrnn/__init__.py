"""normrnn: recurrent normalization schemes behind one shared recurrent scan.

Public API (README, "Python API"):
  normrnn.NormRNN                      drop-in for flax's nn.RNN with any registered scheme
  normrnn.norms.NORMS, register        the scheme registry (one file per scheme)
  normrnn.models.RNNSpec, SequenceClassifier, CharLM, build_model
  normrnn.reader.AttentiveReader, ReaderSpec   the Attentive Reader (question answering)
  normrnn.recurrent.Recurrent, RecurrentStack   the one recurrent scan
  normrnn.experiment.Experiment        build / train step / evaluate / re-estimate / final metrics
  normrnn.trainer.train_and_evaluate   the training loop with checkpoints and logging
  normrnn.rundir.read_run, restore     reading a run directory back
  normrnn.launch                       launching sets of runs (sweeps, reproduce tables)
  normrnn.config                       config schema, validation and loading config files
  normrnn.popstats.reestimate          population statistics from per-batch moments
  normrnn.bench                        the benchmark's shapes, models and timed train step
"""
from normrnn.rnn import NormRNN

__all__ = ['NormRNN']
