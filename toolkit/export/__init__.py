"""Export to GGUF: conversion, quantization, Modelfiles, and verification against the HF model."""
