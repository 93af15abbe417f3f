package main

import "github.com/spf13/cobra"

func kafkaBenchCmd() *cobra.Command { return &cobra.Command{Use: "bench"} }
