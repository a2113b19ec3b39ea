"""CNN question answering with the Attentive Reader: Cooijmans et al. 2016 (arXiv:1603.09025),
sec. 5.4, App. B, Table 4, Fig. 3a/3b (model: normrnn/reader.py; Hermann et al. 2015).

Paper (error %, valid / test, full documents, Table 4): Attentive Reader (Hermann et al.) 38.4 /
37.0, LSTM (theirs) 45.5 / 45.0, BN-e** (theirs) 37.9 / 36.3. Fig. 3a (the 4-sentence task,
minimum validation error): LSTM 50.3, BN-LSTM 49.5, BN-everywhere 50.0, BN-e* 47.1, BN-e** 43.9
(the sentence selection sometimes removes the answer: error floor ~43%).

Variants (argument `variant`; docs/method.md, "Attentive Reader"):
  lstm           LSTM encoders (norm none)
  bn             BN-LSTM encoders (norm batch, per-step statistics at every site)
  bn_everywhere  BN-LSTM + BN (gain 0.1) on every term entering a tanh of the attention/output
  bn_e_star      BN-everywhere + sequence-wise statistics for the encoders' input terms (BN-e*)
  bn_e_star2     BN-e* with bidirectional encoders, valid-prefix reversal (BN-e**)
  ln             LN-LSTM encoders (Ba et al. 2016 ran this model with layer norm)
Bidirectional encoders only for bn_e_star2, as the authors' launch scripts (their LSTM,
BN-LSTM and BN-everywhere runs have no --use_bidir; the paper: "BN-e** ... made bidirectional");
--config.model.reader.bidirectional=True gives any variant Hermann et al.'s bidirectional reader,
--config.model.reader.reverse_padding=whole the reversal before BN-e** (padding read first).

Hyperparameters (App. B): d_h 240 (embedding, attention and output sizes too, as the authors'
code), batch 64, Adam 8e-5, global-norm clip 10; BN-e* and BN-e**: the paper's text says the
learning rate was "reduced" to 8e-4 and the batch to 40, while the run names of the authors' plot
script suggest BN-e* used batch 40 / 8e-4 and BN-e** batch 64 / 8e-5. `hparams=text` (default)
takes the text for both, `hparams=runs` the run names; --config.optimizer.learning_rate and
--config.data.batch_size override either. Full-document BN-e**: d_h 120 (240 overfitted).
Not replicated from the authors' code (docs/method.md, "Attentive Reader"): dropout, the extra
bilinear query-document term of the attention (--use_dq_sims) and the mean-document skip
connection into g (--use_desc_skip_c_g); the softmax is over the candidate entities, not the
whole vocabulary (model.reader.answer_mask=entities: over all entities).

Commands (argument keys: variant, data, size, hparams, seed, select):
  python -m normrnn.train --config=configs/cnn_qa.py:variant=bn_e_star2 --workdir=runs/cnn_bne2
  python -m normrnn.train --config=configs/cnn_qa.py:variant=lstm,data=full --workdir=runs/cnn_lstm
  (the DeepMind Q&A CNN questions in data/cnn/questions/{training,validation,test}, or
  --config.data.download=True)
  python experiments/reproduce.py cnn_qa --root runs/reproduce --launch   # Table 4 / Fig. 3a
  python experiments/qa_curves.py runs/reproduce/cnn_qa_paper/*_top4_seed0 --out fig3a.png

Sizes: paper = the CNN corpus (data=top4: the 4 sentences most relevant to the query, 800k steps
as Fig. 3a; data=full: whole documents, 400k steps as Fig. 3b), days on a GPU; cpu and smoke run
the same models on ptb_cloze (a CPU-scale cloze task from PTB text, NOT the paper's data; see
configs/ptb_cloze.py, which is this file with that data), for plumbing and CPU-scale runs.
"""
from normrnn.config import build, schema

# (learning rate, batch), App. B: every variant's, and the "reduced" ones the paper's text gives
# BN-e* and BN-e** (the authors' run names give them to BN-e* only).
LR_BATCH = (8e-5, 64)
LR_BATCH_REDUCED = (8e-4, 40)
VARIANTS = {
    # norm, input-site scheme, attention/output norm, bidirectional, (learning rate, batch) of
    # the paper's text (`text`) and of the run names (`runs`, given only where it differs from
    # `text`), display label
    'lstm': dict(norm='none', input='', everywhere='none', bidirectional=False,
                 text=LR_BATCH, label='LSTM'),
    'bn': dict(norm='batch', input='', everywhere='none', bidirectional=False,
               text=LR_BATCH, label='BN-LSTM'),
    'bn_everywhere': dict(norm='batch', input='', everywhere='batch', bidirectional=False,
                          text=LR_BATCH, label='BN-everywhere'),
    'bn_e_star': dict(norm='batch', input='sequence', everywhere='batch', bidirectional=False,
                      text=LR_BATCH_REDUCED, label='BN-e*'),
    'bn_e_star2': dict(norm='batch', input='sequence', everywhere='batch', bidirectional=True,
                       text=LR_BATCH_REDUCED, runs=LR_BATCH, label='BN-e**'),
    'ln': dict(norm='layer', input='', everywhere='none', bidirectional=False,
               text=LR_BATCH, label='LN-LSTM'),
}
DATA = ('top4', 'full')
HPARAMS = ('text', 'runs')


def get_config(arg=None, *, task='cnn_qa', default_size='paper', sizes_allowed=build.SIZES):
  a = build.parse_arg(arg, variant='bn_e_star2', data='top4', size=default_size,
                      hparams='text', seed=0, select='paper')
  build.check_choice('variant', a.variant, tuple(VARIANTS))
  build.check_choice('data', a.data, DATA)
  build.check_choice('size', a.size, sizes_allowed)
  build.check_choice('hparams', a.hparams, HPARAMS)
  v = VARIANTS[a.variant]
  lr, batch = v.get(a.hparams, v['text'])  # `runs` defaults to `text`
  full = a.data == 'full'
  paper = dict(data='cnn_qa', dir='data/cnn', hidden=120 if full and a.variant == 'bn_e_star2'
               else 240, embed=240, batch=batch, lr=lr, steps=400_000 if full else 800_000,
               every=1000, seq_len=2000 if full else 500, relevant=0 if full else 4, vocab=0,
               eval_batch=64, reest=(100, 64), val_reest=10, eval_batches=-1, log=50)
  # CPU scale: ptb_cloze (NOT the paper's data), documents <= ~100 tokens; the learning rates
  # are raised for the short budget (experiments/RESULTS.md, "Attentive Reader on a CPU-scale
  # cloze task").
  cloze = dict(data='ptb_cloze', dir='../shared/data/ptb_char', relevant=0, seq_len=200)
  sizes = dict(
      paper=paper,
      cpu=dict(cloze, hidden=64, embed=64, batch=32, lr=2e-3, steps=1500, every=100, vocab=0,
               eval_batch=100, reest=(8, 64), val_reest=4, eval_batches=-1, log=25),
      # A few steps of a tiny model (tests): the final evaluation covers the whole validation
      # and test splits, so its batches are large (fewer of them).
      smoke=dict(cloze, hidden=4, embed=4, batch=4, lr=1e-3, steps=2, every=2, seq_len=64,
                 vocab=50, eval_batch=128, reest=(1, 4), val_reest=1, eval_batches=1, log=2),
  )[a.size]
  modes, select = build.eval_modes(v['norm'], a.select, input=v['input'])
  config = build.experiment(
      args=a, task=task, paper=f'Cooijmans et al. 2016, Table 4 / Fig. 3 ({v["label"]})',
      data=build.data_section(config_file=__file__, name=sizes['data'], dir=sizes['dir'],
                              seq_len=sizes['seq_len'], batch_size=sizes['batch'],
                              eval_batch_size=sizes['eval_batch'],
                              relevant_sentences=sizes['relevant'], max_vocab=sizes['vocab']),
      model=build.model_section(
          cell='lstm', hidden=sizes['hidden'], recurrent_init='orthogonal', h0_noise=0.0,
          # Dense embeddings: one matmul over all steps before the loop.
          hoist_input=True, remat=False,
          norm=build.norm_section(v['norm'], gamma=-1.0, max_time_steps=sizes['seq_len'],
                                  stats_rate=0.05, input=v['input']),
          reader=build.reader_section(
              embed=sizes['embed'], attention=sizes['hidden'], output=sizes['hidden'],
              bidirectional=v['bidirectional'], everywhere=v['everywhere'])),
      optimizer=build.optimizer_section('adam', sizes['lr']),
      train=build.train_section(num_steps=sizes['steps'], log_every=sizes['log'],
                                eval_every=sizes['every'], checkpoint_every=sizes['every']),
      eval_=build.eval_section_from_sizes(sizes, select_metric=select, modes=modes),
      wandb_group=f'cooijmans2016/{task}')
  config.optimizer.clip_norm = 10.0  # App. B (the other tasks clip at 1.0)
  # The variant is a row of Table 4 / Fig. 3: tag it, so that runs can be told apart.
  config.wandb.tags = tuple(config.wandb.tags) + (a.variant, a.data)
  return config


def get_sweep(arg=None):
  """Fig. 3a / Table 4: one point per variant (`variant_sweep`):
    python scripts/sweep.py --config configs/cnn_qa.py:size=cpu --workdir runs/cnn_variants
  `experiments/reproduce.py cnn_qa` runs the same variants as one table."""
  return variant_sweep(get_config, arg)


def variant_sweep(get_config_fn, arg=None) -> list[dict]:
  """One point per variant: the overrides that turn `get_config_fn(arg)` (any variant; size, data
  and hparams as given) into that variant's own config, first `wandb.name` = the variant (so the
  point's directory name starts with it)."""
  base = schema.flatten(get_config_fn(arg).to_dict())
  points = []
  for name in VARIANTS:
    variant = schema.flatten(get_config_fn(f'{arg},variant={name}' if arg else f'variant={name}')
                    .to_dict())
    points.append({'wandb.name': name, **{k: v for k, v in variant.items()
                                          if v != base[k] and k not in ('paper', 'wandb.tags')}})
  return points

