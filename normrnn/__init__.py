"""normrnn: recurrent normalization schemes behind one shared recurrent scan.

Public API (see README "Python API"):
  normrnn.norms.NORMS, normrnn.norms.NormOptions, normrnn.norms.get_scheme
  normrnn.cells.NormLSTMCell, normrnn.cells.TanhRNNCell
  normrnn.recurrent.Recurrent, normrnn.recurrent.RecurrentStack
  normrnn.models.SequenceClassifier, normrnn.models.CharLM, normrnn.models.build_model
  normrnn.popstats.reestimate
"""
