//! One integration-test binary (one link step): every test drives the real `astrid` binary
//! through its role links, in a temp `ASTRID_HOME`, over the real socket.

mod agent;
mod audit;
mod availability;
mod bounds;
mod call_tool;
mod capsule_host;
mod capsules;
mod cli;
mod command_sandbox;
mod commands;
mod daemon;
mod harness;
mod headless;
mod home;
mod instructions;
mod management;
mod mcp;
mod mcp_serve;
mod openai_server;
mod origin;
mod pid1;
mod protocol;
mod readme;
mod session_wire;
mod sessions;
mod state;
mod tools_list;
mod turns;
mod wire;
