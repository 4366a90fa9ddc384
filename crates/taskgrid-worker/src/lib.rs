//! The taskgrid worker: the agent that runs tasks on a machine.
