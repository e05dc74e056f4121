"""Simulation: PyBullet Panda push world, push task, scripted expert, IK controller, demos.

``config`` (SimConfig from config/sim.yaml), ``world`` (PandaWorld), ``task`` (PushTask,
EVAL_SEED_START), ``expert`` (ScriptedPushExpert), ``ik_controller`` (IKController),
``episode`` (lock-step run_episode), ``record_demos`` (genpolicy-record-demos).
"""
